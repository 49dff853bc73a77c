"""celery-operator: runs Celery on Kubernetes from TaskQueue and PeriodicJob resources."""

from .naming import OPERATOR_VERSION

__version__ = OPERATOR_VERSION

# `kopf run -m celery_operator` imports only this package: the handlers are installed here.
from .lifecycle import install_default  # noqa: E402

install_default()
