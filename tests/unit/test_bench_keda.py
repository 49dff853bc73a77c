"""The KEDA benchmark's pure parts: what KEDA is given to scale, how outcomes are counted, its tables."""

from __future__ import annotations

import pytest

from bench import bench_keda as race
from celery_operator import naming

pytestmark = pytest.mark.unit

TEMPLATE = {
    "metadata": {"name": "race-early-worker-keda-tuned-early"},
    "spec": {"replicas": 0, "template": {
        "metadata": {"labels": naming.component_labels("race-early", "worker", "keda_tuned_early"),
                     "annotations": {"celery-operator.dev/queue-name": "keda_tuned_early"}},
        "spec": {"readinessGates": [{"conditionType": "celery-operator.dev/consuming"}],
                 "terminationGracePeriodSeconds": 10,
                 "containers": [{"name": "worker", "image": "sample-app", "args": ["worker", "-Q", "keda_tuned_early"]}]},
    }},
}


def tuned() -> race.Contender:
    return next(c for c in race.contenders("early") if race.kind_of(c) == "keda-tuned")


def test_the_three_contenders_of_a_variant_scale_their_own_queues() -> None:
    early = race.contenders("early")
    assert [race.kind_of(c) for c in early] == ["keda-default", "keda-tuned", "ours"]
    assert len({c.queue for c in early + race.contenders("late")}) == 6
    assert [c.is_keda for c in early] == [True, True, False]


def test_keda_runs_the_operators_pod_template_with_labels_the_operator_does_not_watch() -> None:
    deployment = race.keda_deployment(TEMPLATE, tuned())
    pod = deployment["spec"]["template"]
    assert pod["spec"]["containers"] == TEMPLATE["spec"]["template"]["spec"]["containers"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 10
    assert "readinessGates" not in pod["spec"], "nothing sets the operator's gate on KEDA's pods"
    labels = pod["metadata"]["labels"]
    assert naming.LABEL_MANAGED_BY not in labels and labels["app.kubernetes.io/instance"] == "keda-tuned-early"
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert deployment["spec"]["replicas"] == 0
    assert "readinessGates" in TEMPLATE["spec"]["template"]["spec"], "the template itself is left as it was"


def test_the_scaled_objects_use_keda_defaults_or_the_careful_users_settings() -> None:
    default, tuned_one, _ = race.contenders("early")
    plain = race.scaled_object(default, "10.0.0.1:6379")["spec"]
    assert plain["triggers"] == [{"type": "redis", "metadata": {
        "address": "10.0.0.1:6379", "listName": default.queue, "listLength": str(race.CONCURRENCY)}}]
    assert (plain["minReplicaCount"], plain["maxReplicaCount"]) == (0, race.MAX_REPLICAS)
    assert "pollingInterval" not in plain and "cooldownPeriod" not in plain and "advanced" not in plain
    careful = race.scaled_object(tuned_one, "10.0.0.1:6379")["spec"]
    assert (careful["pollingInterval"], careful["cooldownPeriod"]) == (2, 60)
    behavior = careful["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 60
    assert careful["scaleTargetRef"] == {"name": race.keda_deployment_name(tuned_one)}


def test_outcomes_tell_lost_tasks_from_those_awaiting_redelivery() -> None:
    early_killed = race.Outcome(sent=2, completed=0, runs=0, waiting=0)
    assert (early_killed.interrupted, early_killed.lost, early_killed.redelivered) == (2, 2, 0)
    late_killed = race.Outcome(sent=2, completed=0, runs=0, waiting=2)
    assert (late_killed.interrupted, late_killed.lost) == (2, 0)
    ran_again = race.Outcome(sent=2, completed=2, runs=3, waiting=0)
    assert (ran_again.interrupted, ran_again.lost, ran_again.redelivered) == (0, 0, 1)


def test_a_table_names_every_cell_it_did_not_measure() -> None:
    table = race.Table("Drain")
    table.add("all done", {"keda-default": "30.00 s", "ours": "5.00 s"}, race.ratio({"keda-default": 30.0}, 5.0))
    assert table.unmeasured() == ["Drain: all done / keda-tuned"]
    markdown = table.markdown()
    assert "| all done | 30.00 s | not measured | 5.00 s | 6.0× / — |" in markdown
    table.rows[0][1]["keda-tuned"] = "none within 30 s"  # measured: it did not happen in the window
    assert table.unmeasured() == []


def test_the_docs_section_is_replaced_between_its_markers_or_appended() -> None:
    document = f"# Benchmarks\n\nintro\n\n{race.DOCS_START}\nold\n{race.DOCS_END}\n\n## after\n"
    replaced = race.replace_section(document, "new table")
    assert "old" not in replaced and "new table" in replaced and replaced.endswith("## after\n")
    assert replaced.count(race.DOCS_START) == 1
    appended = race.replace_section("# Benchmarks\n", "first")
    assert appended.index(race.DOCS_START) < appended.index("first") < appended.index(race.DOCS_END)


def test_the_headline_gives_keda_tuned_over_ours_and_holds_reactions_to_the_bar() -> None:
    first = race.Table("First message on a queue at zero (5 trials, p50 / p95)")
    first.add("message → replicas > 0", {}, "313.5× / 21.0×")
    first.add("message → its task done", {}, "11.6× / 1.7×")
    busy = race.Table("A burst (8 × 2 s) on a queue already busy on one replica (5 trials, p50 / p95)")
    busy.add("burst → replicas rise", {}, "7.3× / 5.0×")
    outcomes = race.Table("Scale-down safety: 2 tasks")
    outcomes.add("acks_late", {"ours": "2 / 0 / 0 / 0"})
    found = {f.name: f for f in race.headline([first, busy, outcomes])}
    assert set(found) == {"KEDA tuned ÷ ours, First message on a queue at zero: message → replicas > 0",
                          "KEDA tuned ÷ ours, First message on a queue at zero: message → its task done",
                          "KEDA tuned ÷ ours, A burst: burst → replicas rise"}
    reaction = found["KEDA tuned ÷ ours, First message on a queue at zero: message → replicas > 0"]
    assert (reaction.value, reaction.target, reaction.met) == (21.0, "≥ 10×", True)
    assert found["KEDA tuned ÷ ours, A burst: burst → replicas rise"].met is False
    assert found["KEDA tuned ÷ ours, First message on a queue at zero: message → its task done"].target is None
