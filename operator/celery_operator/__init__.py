"""celery-operator: runs Celery on Kubernetes from TaskQueue and PeriodicJob resources."""

__version__ = "0.2.0"  # with pyproject.toml and the chart (tests/unit/test_release.py)

# `kopf run -m celery_operator` imports only this package: the handlers are installed here.
from .lifecycle import install_default  # noqa: E402

install_default()
