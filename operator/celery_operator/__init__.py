"""celery-operator: runs Celery on Kubernetes from TaskQueue and PeriodicJob resources."""

__version__ = "0.1.0"
