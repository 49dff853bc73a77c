"""Which pods get a ServiceAccount token, how it is asked for, and when it is renewed."""

from __future__ import annotations

import pytest

from devcluster.agent.serviceaccount import refresh_at, service_account_name, token_request, wants_token

pytestmark = pytest.mark.unit

ADMITTED_VOLUME = {"name": "kube-api-access-x1", "projected": {"sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt"}}]}}


def test_the_admission_plugins_projected_volume_asks_for_a_token() -> None:
    assert wants_token({"spec": {"volumes": [ADMITTED_VOLUME]}}) == (True, 3607)


def test_no_volume_means_no_token_unless_automount_is_explicitly_on() -> None:
    assert wants_token({"spec": {"automountServiceAccountToken": False}}) == (False, 0)
    assert wants_token({"spec": {}}) == (False, 0)
    assert wants_token({"spec": {"automountServiceAccountToken": True}}) == (True, 3607)


def test_a_token_for_another_audience_is_not_the_api_servers() -> None:
    vault = {"name": "vault", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}}
    assert wants_token({"spec": {"volumes": [vault]}}) == (False, 0)


def test_the_token_is_bound_to_the_pod() -> None:
    pod = {"metadata": {"name": "web-1", "uid": "u-1"}, "spec": {}}
    spec = token_request(pod, 3607)["spec"]
    assert spec["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": "u-1"}
    assert spec["expirationSeconds"] == 3607
    assert service_account_name(pod) == "default"
    assert service_account_name({"spec": {"serviceAccountName": "robot"}}) == "robot"


def test_renewal_after_80_percent_of_the_lifetime_and_at_most_a_day() -> None:
    assert refresh_at(1000.0, 1000.0 + 3600) == 1000.0 + 2880
    assert refresh_at(0.0, 365 * 24 * 3600.0) == 24 * 3600.0
