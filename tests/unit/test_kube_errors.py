"""What the Kubernetes adapter makes of the API server's refusals (celery_operator.kube._kube_error)."""

from __future__ import annotations

import json

import pytest

from celery_operator.kube import _kube_error

pytestmark = pytest.mark.unit

# The Status body kube-apiserver v1.35 answered a server-side apply of a Secret in a namespace being
# deleted (captured from the devcluster): a StatusCause's type is serialized under "reason".
TERMINATING = {
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 403, "reason": "Forbidden",
    "message": 'secrets "s" is forbidden: unable to create new content in namespace gone because it is being '
               "terminated",
    "details": {"name": "s", "kind": "secrets", "causes": [
        {"reason": "NamespaceTerminating", "message": "namespace gone is being terminated",
         "field": "metadata.namespace"}]},
}


def test_a_create_in_a_namespace_being_deleted_is_recognised_from_the_servers_own_answer() -> None:
    error = _kube_error(403, "Forbidden", json.dumps(TERMINATING).encode())
    assert error.namespace_terminating
    assert (error.status, error.reason) == (403, "Forbidden") and "being terminated" in error.message


def test_any_other_refusal_is_not_taken_for_a_namespace_going_away() -> None:
    denied = {**TERMINATING, "message": 'secrets "s" is forbidden: User "x" cannot create resource "secrets"',
              "details": {"name": "s", "kind": "secrets"}}
    assert not _kube_error(403, "Forbidden", json.dumps(denied)).namespace_terminating
    assert not _kube_error(403, "Forbidden", b"not json").namespace_terminating
