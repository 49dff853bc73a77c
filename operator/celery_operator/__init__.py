"""celery-operator: runs Celery on Kubernetes from TaskQueue and PeriodicJob resources."""

__version__ = "0.1.0"

# `kopf run -m celery_operator` imports only this package: register the handlers here.
from . import handlers  # noqa: E402,F401
