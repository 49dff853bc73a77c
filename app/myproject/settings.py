"""Minimal Django settings for the sample Celery app: no database work, no web pages."""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sample-app-not-a-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    "myapp",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    }
}

USE_TZ = True
TIME_ZONE = "UTC"

# Celery. In a TaskQueue's pods CELERY_BROKER_URL comes from the <taskqueue>-broker Secret; the
# environment variable wins over these settings in any case.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/0")
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ROUTES = {
    "myapp.tasks.process_important_data": {"queue": "high_priority"},
    "myapp.tasks.process_regular_data": {"queue": "low_priority"},
}

# Delivery is the deployment's choice, read from its environment as a twelve-factor project does:
# CELERY_TASK_ACKS_LATE=true acknowledges a task once it finished (a task whose worker dies runs
# again: at least once); CELERY_BROKER_TRANSPORT_OPTIONS is kombu's transport options as JSON
# (on Redis, visibility_timeout decides when a dead worker's unacknowledged messages return).
CELERY_TASK_ACKS_LATE = os.environ.get("CELERY_TASK_ACKS_LATE", "false").lower() == "true"
CELERY_TASK_REJECT_ON_WORKER_LOST = CELERY_TASK_ACKS_LATE
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS") or "{}")
