from __future__ import annotations

import pytest

from celery_operator import naming

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("queue", "dns"),
    [
        ("high_priority", "high-priority"),
        ("High.Priority", "high-priority"),
        ("emails:bulk", "emails-bulk"),
        ("a-b", "a-b"),
        ("Q1", "q1"),
    ],
)
def test_queue_dns_name(queue: str, dns: str) -> None:
    assert naming.queue_dns_name(queue) == dns


def test_child_names() -> None:
    assert naming.broker_name("shop") == "shop-broker"
    assert naming.worker_name("shop", "high_priority") == "shop-worker-high-priority"
    assert naming.beat_name("shop") == "shop-beat"
    assert naming.flower_name("shop") == "shop-flower"


def test_component_labels_for_a_worker() -> None:
    assert naming.component_labels("shop", naming.WORKER, "High_Priority") == {
        "app.kubernetes.io/name": "celery",
        "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "celery-operator",
        "celery-operator.dev/queue": "high-priority",
    }


def test_component_labels_without_queue_have_no_queue_label() -> None:
    labels = naming.component_labels("shop", naming.BROKER)
    assert labels["app.kubernetes.io/component"] == "broker"
    assert naming.LABEL_QUEUE not in labels


def test_selector_labels_are_instance_component_and_queue() -> None:
    assert naming.selector_labels("shop", naming.WORKER, "emails:bulk") == {
        "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "worker",
        "celery-operator.dev/queue": "emails-bulk",
    }
    assert naming.selector_labels("shop", naming.FLOWER) == {
        "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "flower",
    }


def test_queue_annotation_keeps_the_exact_name() -> None:
    assert naming.queue_annotations("emails:bulk") == {"celery-operator.dev/queue-name": "emails:bulk"}


def test_owned_children_selector() -> None:
    assert naming.owned_children_selector("shop") == (
        "app.kubernetes.io/name=celery,app.kubernetes.io/managed-by=celery-operator,app.kubernetes.io/instance=shop"
    )


def test_longest_names_fit_kubernetes_limits() -> None:
    taskqueue = "t" * naming.MAX_TASKQUEUE_NAME_LENGTH
    queue = "q" * naming.MAX_QUEUE_NAME_LENGTH
    # Deployment names are DNS subdomains (253); their pods add a 17-character suffix.
    assert len(naming.worker_name(taskqueue, queue)) + 17 <= 253
    # Service names are DNS labels (63).
    assert len(naming.broker_name(taskqueue)) <= 63
    assert len(naming.flower_name(taskqueue)) <= 63
    # Label values are at most 63.
    assert len(naming.queue_dns_name(queue)) <= 63


@pytest.mark.parametrize("name", ["a", "high_priority", "a.b:c-d", "Q" * 50])
def test_queue_name_pattern_accepts(name: str) -> None:
    assert naming.QUEUE_NAME_PATTERN.fullmatch(name)


@pytest.mark.parametrize("name", ["", "_a", "a_", "a b", "q" * 51, "a/b"])
def test_queue_name_pattern_rejects(name: str) -> None:
    assert not naming.QUEUE_NAME_PATTERN.fullmatch(name)
