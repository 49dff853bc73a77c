import os
import time

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myproject.settings")

# For the operator's tests: an app that takes this long to load (a worker whose process runs but
# does not consume yet).
time.sleep(float(os.environ.get("SAMPLE_APP_IMPORT_DELAY_SECONDS") or 0))

app = Celery("myproject")

# All Celery settings live in Django's settings with a CELERY_ prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Find tasks.py in every installed Django app.
app.autodiscover_tasks()
