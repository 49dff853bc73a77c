import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myproject.settings")

app = Celery("myproject")

# All Celery settings live in Django's settings with a CELERY_ prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Find tasks.py in every installed Django app.
app.autodiscover_tasks()
