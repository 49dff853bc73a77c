"""The TaskQueue's NetworkPolicies (builders/networkpolicy.py): who may connect to which of its pods."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from celery_operator import builders, naming
from celery_operator.builders import BeatOptions, OperatorSource
from celery_operator.models import ObjectIdentity, TaskQueueSpec, parse_taskqueue_spec
from celery_operator.settings import Settings

pytestmark = pytest.mark.unit

OWNER = ObjectIdentity(name="shop", namespace="prod", uid="11111111-2222-3333-4444-555555555555", generation=3)
IMAGES = builders.DefaultImages(beat="local/operator:1", redis="local/redis:7", flower="local/flower:2")
OPERATOR = OperatorSource(namespace="celery-system", pod_labels={"app.kubernetes.io/name": "celery-operator"},
                          cidrs=("10.150.0.0/24",))
BASE: dict[str, Any] = {"image": "acme/shop:1", "app": "myproject",
                        "queues": [{"name": "high_priority"}, {"name": "low_priority"}]}


def parse(**changes: Any) -> TaskQueueSpec:
    return parse_taskqueue_spec({**copy.deepcopy(BASE), **changes})


def children(spec: TaskQueueSpec, beat: BeatOptions | None = None) -> list[dict[str, Any]]:
    password = {"broker_password": "pw"} if spec.broker.managed is not None else {}
    flower = {"flower_password": "fpw"} if spec.flower.generated_password else {}
    return builders.desired_children(OWNER, spec, images=IMAGES, beat=beat, operator_source=OPERATOR,
                                     **password, **flower)


def policies(spec: TaskQueueSpec, beat: BeatOptions | None = None) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in children(spec, beat) if c["kind"] == "NetworkPolicy"}


def pod_labels(spec: TaskQueueSpec, beat: BeatOptions | None = None) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c["spec"]["template"]["metadata"]["labels"]
            for c in children(spec, beat) if c["kind"] == "Deployment"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def sources(policy: dict[str, Any]) -> list[dict[str, Any]]:
    [rule] = policy["spec"]["ingress"]
    return rule["from"]


def test_the_managed_broker_lets_in_the_taskqueue_its_producers_and_the_operator_on_redis_port_only() -> None:
    spec = parse(flower={"enabled": True})
    broker = policies(spec)["shop-broker"]
    assert broker["spec"]["policyTypes"] == ["Ingress", "Egress"], "Redis never connects out"
    assert "egress" not in broker["spec"], "no egress rule: no connection out at all"
    [rule] = broker["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "celery", "app.kubernetes.io/instance": "shop"}}},
        {"podSelector": {"matchLabels": {"celery-operator.dev/producer": "shop"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "celery-operator"}},
         "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "celery-system"}}},
        {"ipBlock": {"cidr": "10.150.0.0/24"}},
    ]
    labels = pod_labels(spec)
    assert selects(broker["spec"]["podSelector"], labels["shop-broker"])
    taskqueue_pods = rule["from"][0]["podSelector"]
    for name in ("shop-worker-high-priority", "shop-worker-low-priority", "shop-flower"):
        assert selects(taskqueue_pods, labels[name]), f"{name} may reach its broker"
        assert not selects(broker["spec"]["podSelector"], labels[name])


def test_workers_and_the_beat_accept_no_connection_at_all() -> None:
    spec = parse()
    found = policies(spec, BeatOptions(custom=False))
    labels = pod_labels(spec, BeatOptions(custom=False))
    for name, pods in (("shop-workers", ("shop-worker-high-priority", "shop-worker-low-priority")),
                       ("shop-beat", ("shop-beat",))):
        policy = found[name]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert "ingress" not in policy["spec"], "no rule: nothing in (an empty `from` would let everyone in)"
        assert {p for p in labels if selects(policy["spec"]["podSelector"], labels[p])} == set(pods)


def test_no_beat_no_beat_policy_and_the_beat_state_redis_only_with_an_amqp_broker() -> None:
    assert "shop-beat" not in policies(parse())
    amqp = parse(broker={"url": "amqp://rabbit.shared:5672//"})
    found = policies(amqp, BeatOptions(custom=False, state="managed", state_password="spw"))
    assert "shop-broker" not in found, "an external broker is not ours to guard"
    state = found["shop-beat-state"]
    assert [rule["ports"] for rule in state["spec"]["ingress"]] == [[{"protocol": "TCP", "port": 6379}]]
    assert state["spec"]["policyTypes"] == ["Ingress", "Egress"] and "egress" not in state["spec"]
    assert sources(state)[0] == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "celery",
                                                                  "app.kubernetes.io/instance": "shop"}}}
    assert {"ipBlock": {"cidr": "10.150.0.0/24"}} in sources(state)
    labels = pod_labels(amqp, BeatOptions(custom=False, state="managed", state_password="spw"))
    assert {p for p in labels if selects(state["spec"]["podSelector"], labels[p])} == {"shop-beat-state"}
    assert {p for p in labels if selects(found["shop-beat"]["spec"]["podSelector"], labels[p])} == {"shop-beat"}


def test_flower_lets_in_its_namespace_by_default_or_exactly_what_allow_from_names() -> None:
    default = policies(parse(flower={"enabled": True}))["shop-flower"]
    assert default["spec"]["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5555}]}]
    peers = [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}, {"ipBlock": {"cidr": "192.168.0.0/16"}}]
    chosen = policies(parse(flower={"enabled": True, "allowFrom": peers}))["shop-flower"]
    assert sources(chosen) == peers
    nobody = policies(parse(flower={"enabled": True, "allowFrom": []}))["shop-flower"]
    assert "ingress" not in nobody["spec"]
    assert "shop-flower" not in policies(parse())


def test_turned_off_there_are_none_and_egress_is_restricted_only_for_our_redis() -> None:
    assert policies(parse(networkPolicy={"enabled": False}, flower={"enabled": True}),
                    BeatOptions(custom=False)) == {}
    for name, policy in policies(parse(flower={"enabled": True}), BeatOptions(custom=False)).items():
        denies_egress = "Egress" in policy["spec"]["policyTypes"]
        assert denies_egress == (name == "shop-broker"), name
        assert "egress" not in policy["spec"]


def test_policies_come_before_the_pods_they_guard_and_are_owned_children() -> None:
    kinds = [c["kind"] for c in children(parse(flower={"enabled": True}), BeatOptions(custom=False))]
    assert max(i for i, kind in enumerate(kinds) if kind == "NetworkPolicy") < kinds.index("Deployment")
    for policy in policies(parse(flower={"enabled": True}), BeatOptions(custom=False)).values():
        assert policy["metadata"]["ownerReferences"] == [OWNER.owner_reference()]
        assert policy["metadata"]["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
        assert policy["metadata"]["namespace"] == "prod"


def test_an_operator_without_a_pod_or_cidrs_is_no_peer() -> None:
    assert OperatorSource().peers() == []
    assert OperatorSource(pod_labels={"app": "op"}).peers() == [{"podSelector": {"matchLabels": {"app": "op"}}}]


def test_settings_name_the_operator_pod_and_its_source_addresses() -> None:
    settings = Settings.from_environment({"CELERY_OPERATOR_POD_LABELS": "app.kubernetes.io/name=celery-operator, a=b",
                                          "CELERY_OPERATOR_SOURCE_CIDRS": "10.150.0.1/24,192.168.1.5/32"})
    assert settings.pod_label_map() == {"app.kubernetes.io/name": "celery-operator", "a": "b"}
    assert settings.source_cidr_list() == ("10.150.0.0/24", "192.168.1.5/32")
    for name, value in (("POD_LABELS", "no-equals-sign"), ("SOURCE_CIDRS", "10.0.0.0/33")):
        with pytest.raises(ValueError, match=name):
            Settings.from_environment({f"CELERY_OPERATOR_{name}": value})
