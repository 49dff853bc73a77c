"""PeriodicJobs end to end: the operator, the devcluster's node agent running the beat
(`python -m celery_operator.beat`) and real workers of the sample app, and a real Redis the test
starts. Every run is a `myapp.tasks.record` task whose id names its job and slot
(`<namespace>/<job>@<slot>`), recorded by the worker that ran it: the tests read the slots back and
check that none is missing and none doubled.

Figures (edit-to-effect latency, the gap a beat pod restart leaves) are printed; run with -s."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Iterator

import kubernetes
import pytest
import redis

from celery_operator.beat.schedule import parse_slot
from tests.helpers.brokers import RabbitBroker
from tests.helpers.devcluster import DevCluster
from tests.helpers.operator import OperatorProcess
from tests.helpers.periodicjobs import (PeriodicJobs, assert_consecutive, assert_unique, beat_pods, fired,
                                        periodicjob, recorded, run_slots, state_keys)
from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import SAMPLE_APP_IMAGE, TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, holds_for, wait_for

pytestmark = pytest.mark.e2e

CUSTOM_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"


@pytest.fixture
def pjs(devcluster: DevCluster, namespace: str, operator: OperatorProcess) -> Iterator[PeriodicJobs]:
    handle = PeriodicJobs(devcluster, namespace)
    yield handle
    handle.close()


def beat_taskqueue(name: str, url: str, queue: str = "jobs", **spec: Any) -> dict[str, Any]:
    """A TaskQueue on the test's Redis with one always-on worker for `queue`."""
    return taskqueue(name, broker={"url": url}, resultBackend={"url": url},
                     queues=[{"name": queue, "replicas": 1, "concurrency": 1}], **spec)


def test_an_interval_job_runs_takes_edits_suspends_resumes_and_goes(tqs: TaskQueues, pjs: PeriodicJobs,
                                                                     redis_server: RedisServer) -> None:
    url, ns = redis_server.url, tqs.namespace
    tqs.apply(beat_taskqueue("ticks", url))
    pjs.apply(periodicjob("tick", "ticks", "tick-runs", interval="2s"))
    ready = pjs.wait_ready("tick", "True", "Scheduled", timeout=90)
    assert "myapp.tasks.record every 2s" in ready["message"]
    beat_ready = tqs.wait_condition("ticks", "BeatReady", "True")
    assert beat_ready["reason"] == "BeatRunning"
    # Ready also waits for the worker to consume (its readiness gate), which may come after the beat
    tqs.wait_condition("ticks", "Ready", "True")

    wait_for(lambda: len(recorded(url, "tick-runs")) >= 3, 30, "three runs of the 2s job")
    slots = run_slots(url, "tick-runs", "tick")
    assert all(s == int(s) and int(s) % 2 == 0 for s in slots), f"wall-clock aligned to even seconds: {slots}"
    assert_unique(slots)
    assert_consecutive(slots, 2)
    workers = {entry["hostname"].split("@")[0] for entry in recorded(url, "tick-runs")}
    assert workers == {"jobs"}, "run by the TaskQueue's worker of queue jobs"

    def times() -> tuple[float, float] | None:
        status = pjs.status("tick")
        if "lastScheduleTime" in status and "nextScheduleTime" in status:
            last, upcoming = parse_slot(status["lastScheduleTime"]), parse_slot(status["nextScheduleTime"])
            return (last, upcoming) if upcoming - last == 2 else None
        return None

    wait_for(times, 10, "lastScheduleTime and nextScheduleTime 2 s apart")

    beat = tqs.deployment("ticks-beat")
    assert beat.spec.replicas == 1 and beat.spec.strategy.type == "Recreate"
    assert beat.metadata.labels["app.kubernetes.io/component"] == "beat"
    assert beat.metadata.owner_references[0].name == "ticks"
    pod_spec = beat.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    (container,) = pod_spec.containers
    assert container.command == ["python", "-m", "celery_operator.beat"]
    assert {e.name for e in container.env if e.value_from and e.value_from.secret_key_ref} == {
        "CELERY_BROKER_URL", "CELERY_OPERATOR_BEAT_STATE_URL"}
    assert all(not (e.value or "").startswith("redis://") for e in container.env)

    # An edit to 1 s takes effect within 10 s: the first run at an odd second proves the new schedule.
    edited = time.time()
    pjs.patch_spec("tick", {"interval": "1s"})
    odd = wait_for(lambda: [s for s in run_slots(url, "tick-runs") if s > edited and int(s) % 2 == 1], 15,
                   "a run at an odd second")
    print(f"\nedit 2s -> 1s: first run on the new schedule {odd[0] - edited:.2f} s after the edit")
    assert odd[0] - edited < 10
    wait_for(lambda: len([s for s in run_slots(url, "tick-runs") if s >= odd[0]]) >= 4, 15, "four runs at 1s")
    slots = run_slots(url, "tick-runs")
    assert_unique(slots)
    assert_consecutive([s for s in slots if s >= odd[0]], 1)
    assert_consecutive([s for s in slots if s < odd[0]], 2)

    # Suspend: once the PeriodicJob says so, the beat claims no further run.
    suspended = time.time()
    pjs.patch_spec("tick", {"suspend": True})
    pjs.wait_ready("tick", "True", "Suspended", timeout=15)
    last = fired(url, ns, "ticks", "tick")
    print(f"suspend: last run {last - suspended:+.2f} s after the edit")
    assert last is not None and last - suspended < 10
    wait_for(lambda: "nextScheduleTime" not in pjs.status("tick"), 10, "no nextScheduleTime while suspended")
    holds_for(lambda: fired(url, ns, "ticks", "tick") == last and max(run_slots(url, "tick-runs")) <= last, 4,
              "no run while suspended")

    # Resume: runs again, without catching up what fell due while suspended.
    resumed = time.time()
    pjs.patch_spec("tick", {"suspend": False})
    pjs.wait_ready("tick", "True", "Scheduled", timeout=15)
    wait_for(lambda: len([s for s in run_slots(url, "tick-runs") if s > last]) >= 2, 15, "runs after resuming")
    after = sorted(s for s in run_slots(url, "tick-runs") if s > last)
    assert after[0] > resumed, f"no run of the suspended time was caught up: {after[0] - resumed:+.2f}"
    assert_consecutive(after, 1)

    # Delete: the job leaves the beat at once, and the beat goes with the last PeriodicJob.
    deleted = time.time()
    pjs.delete("tick")
    wait_for(lambda: tqs.deployment("ticks-beat") is None, 30, "the beat Deployment to go")
    print(f"delete: beat Deployment gone {time.time() - deleted:.2f} s after the delete")
    wait_for(lambda: tqs.condition("ticks", "BeatReady") is None, 15, "BeatReady to go")
    tqs.wait_condition("ticks", "Ready", "True")
    jobs_key, fired_key = state_keys(ns, "ticks")
    assert redis.Redis.from_url(url).exists(jobs_key, fired_key) == 0, "the schedule state is gone"
    final = run_slots(url, "tick-runs")
    assert max(final) < deleted + 10
    print(f"delete: last run {max(final) - deleted:+.2f} s after the delete")
    assert_unique(final)


def test_deleting_the_beat_pod_leaves_no_run_missing_or_doubled(tqs: TaskQueues, pjs: PeriodicJobs,
                                                                redis_server: RedisServer) -> None:
    url, ns = redis_server.url, tqs.namespace
    tqs.apply(beat_taskqueue("steady", url))
    pjs.apply(periodicjob("steady", "steady", "steady-runs", interval="2s"))
    pjs.wait_ready("steady", "True", "Scheduled", timeout=90)
    wait_for(lambda: len(recorded(url, "steady-runs")) >= 3, 30, "three runs")
    (pod,) = beat_pods(tqs.core, tqs.namespace, "steady")

    deleted = time.time()
    before = fired(url, ns, "steady", "steady")
    tqs.core.delete_namespaced_pod(pod.metadata.name, tqs.namespace)
    moved = wait_for(lambda: (f := fired(url, ns, "steady", "steady")) and f > deleted and f, 30,
                     "a run sent after the pod was deleted")
    resumed_at = time.time()
    print(f"\nbeat pod deleted: next send {resumed_at - deleted:.2f} s later "
          f"(last run before {before - deleted:+.2f} s, first after {moved - deleted:+.2f} s)")
    wait_for(lambda: max(run_slots(url, "steady-runs")) >= deleted + 12, 40, "runs well past the restart")
    (replacement,) = wait_for(lambda: beat_pods(tqs.core, tqs.namespace, "steady"), 30, "one beat pod")
    assert replacement.metadata.name != pod.metadata.name
    slots = run_slots(url, "steady-runs", "steady")
    assert_unique(slots)
    assert_consecutive(slots, 2)
    tqs.wait_condition("steady", "BeatReady", "True")


def test_two_taskqueues_on_one_redis_run_their_own_beats(tqs: TaskQueues, pjs: PeriodicJobs,
                                                         redis_server: RedisServer) -> None:
    url, ns = redis_server.url, tqs.namespace
    tqs.apply(beat_taskqueue("alpha", url, queue="alpha-jobs"))
    tqs.apply(beat_taskqueue("bravo", url, queue="bravo-jobs"))
    pjs.apply(periodicjob("alpha-tick", "alpha", "alpha-runs", queue="alpha-jobs", interval="2s"))
    pjs.apply(periodicjob("bravo-tick", "bravo", "bravo-runs", queue="bravo-jobs", interval="1s"))
    pjs.wait_ready("alpha-tick", "True", "Scheduled", timeout=90)
    pjs.wait_ready("bravo-tick", "True", "Scheduled", timeout=90)
    wait_for(lambda: len(recorded(url, "alpha-runs")) >= 2 and len(recorded(url, "bravo-runs")) >= 3, 30,
             "runs of both")
    assert tqs.deployment("alpha-beat") is not None and tqs.deployment("bravo-beat") is not None
    client = redis.Redis.from_url(url)
    assert set(client.hkeys(state_keys(ns, "alpha")[0])) == {b"alpha-tick"}
    assert set(client.hkeys(state_keys(ns, "bravo")[0])) == {b"bravo-tick"}
    bravo_entry = client.hget(state_keys(ns, "bravo")[0], "bravo-tick")

    # A PeriodicJob moved to another TaskQueue leaves the first beat at once and runs on the second.
    # Without spec.queue it goes to Celery's default queue, which no worker here consumes: the
    # messages stay there to be counted.
    pjs.apply(periodicjob("mover", "alpha", "mover-runs", queue=None, interval="1s"))
    pjs.wait_ready("mover", "True", "Scheduled", timeout=30)
    wait_for(lambda: client.llen("celery") >= 2, 30, "the mover's runs from alpha's beat")
    moved = time.time()
    pjs.patch_spec("mover", {"taskQueueRef": {"name": "bravo"}})
    wait_for(lambda: not client.hexists(state_keys(ns, "alpha")[0], "mover"), 10,  # API.md: within 10 s
             "the mover to leave alpha's beat")
    print(f"\nmove alpha -> bravo: left alpha's schedule {time.time() - moved:.2f} s after the edit")
    pjs.wait_ready("mover", "True", "Scheduled", timeout=30)
    assert "TaskQueue bravo" in pjs.condition("mover")["message"]
    assert "default queue 'celery'" in pjs.condition("mover")["message"], "no worker consumes queue celery"
    wait_for(lambda: fired(url, ns, "bravo", "mover") and fired(url, ns, "bravo", "mover") >= moved + 3, 15,
             "the mover on bravo's beat")
    mover_ids = [json.loads(m)["headers"]["id"] for m in client.lrange("celery", 0, -1)]
    assert len(mover_ids) == len(set(mover_ids)), "no run sent twice across the move"
    assert not [i for i in mover_ids if not i.startswith(f"{ns}/mover@")]

    alpha_uid = tqs.get("alpha")["metadata"]["uid"]
    [owner] = tqs.deployment("alpha-beat").metadata.owner_references
    assert (owner.kind, owner.uid, owner.controller) == ("TaskQueue", alpha_uid, True), "garbage collection takes it"
    deleted = time.time()
    tqs.custom.delete_namespaced_custom_object("celery-operator.dev", "v1alpha1", ns, "taskqueues", "alpha")
    pjs.wait_ready("alpha-tick", "False", "TaskQueueNotFound", timeout=30)
    wait_for(lambda: max(run_slots(url, "bravo-runs")) >= deleted + 6, 30, "bravo's runs past the deletion")
    bravo = run_slots(url, "bravo-runs", "bravo-tick")
    assert_unique(bravo)
    assert_consecutive(bravo, 1)
    assert client.hget(state_keys(ns, "bravo")[0], "bravo-tick") == bravo_entry, "bravo's schedule untouched"
    # alpha's state went with it, so its beat sent nothing more even while its pod waited for garbage
    # collection (on the devcluster that can take half a minute: the collector learns new CRDs late)
    alpha = run_slots(url, "alpha-runs", "alpha-tick")
    assert_unique(alpha)
    assert_consecutive(alpha, 2)
    print(f"TaskQueue deleted: alpha's last run {max(alpha) - deleted:+.2f} s after the delete")
    assert max(alpha) < deleted + 10
    assert client.exists(*state_keys(ns, "alpha")) == 0, "alpha's schedule state is gone"
    pjs.wait_ready("bravo-tick", "True", "Scheduled", timeout=5)
    try:
        wait_for(lambda: tqs.deployment("alpha-beat") is None, 60, "alpha's beat to go with its TaskQueue")
    except ConditionNotMet as error:
        left = tqs.deployment("alpha-beat")
        raise AssertionError(f"{error}: the garbage collector left it ({left.metadata if left else 'gone now'})") \
            from error


def test_status_reports_problems_and_heals_when_the_taskqueue_appears(tqs: TaskQueues, pjs: PeriodicJobs,
                                                                      redis_server: RedisServer) -> None:
    url, ns = redis_server.url, tqs.namespace
    pjs.apply(periodicjob("early", "later", "early-runs", interval="1s"))
    pjs.apply(periodicjob("minutely", "later", "minutely-runs", schedule="* * * * *", timeZone="Europe/Berlin"))
    pjs.apply(periodicjob("bad-zone", "later", "never", schedule="0 3 * * *", timeZone="Mars/Olympus"))
    pjs.apply(periodicjob("bad-date", "later", "never", schedule="0 0 31 2 *"))
    missing = pjs.wait_ready("early", "False", "TaskQueueNotFound")
    assert "spec.taskQueueRef.name" in missing["message"] and "'later'" in missing["message"]
    wait_for(lambda: [e for e in pjs.events("early") if e.reason == "TaskQueueNotFound"], 15, "the Warning event")
    assert "spec.timeZone" in pjs.wait_ready("bad-zone", "False", "InvalidSchedule")["message"]
    assert "spec.schedule" in pjs.wait_ready("bad-date", "False", "InvalidSchedule")["message"]

    tqs.apply(beat_taskqueue("later", url))
    pjs.wait_ready("early", "True", "Scheduled", timeout=90)
    wait_for(lambda: [e for e in pjs.events("early") if e.reason == "Scheduled" and e.type == "Normal"], 15,
             "the Normal event once it heals")
    wait_for(lambda: len(recorded(url, "early-runs")) >= 2, 30, "runs once the TaskQueue exists")
    minutely = pjs.wait_ready("minutely", "True", "Scheduled")
    assert "in Europe/Berlin" in minutely["message"]
    upcoming = wait_for(lambda: pjs.status("minutely").get("nextScheduleTime"), 10, "nextScheduleTime")
    assert upcoming.endswith(":00Z") and 0 < parse_slot(upcoming) - time.time() <= 61
    beat_ready = tqs.wait_condition("later", "BeatReady", "True")
    assert "2 PeriodicJob(s)" in beat_ready["message"], "the invalid ones are not carried"
    assert set(redis.Redis.from_url(url).hkeys(state_keys(ns, "later")[0])) == {b"early", b"minutely"}
    assert pjs.condition("bad-zone")["reason"] == "InvalidSchedule"

    status = wait_for(lambda: (s := pjs.status("early")).get("lastScheduleTime") and s, 10, "lastScheduleTime")
    assert status["observedGeneration"] == pjs.get("early")["metadata"]["generation"]
    printed = tqs.cluster.kubectl("get", "pj", "-n", ns, "early").stdout
    assert "later" in printed and "myapp.tasks.record" in printed and "1s" in printed


def test_a_custom_scheduler_runs_celery_beat_and_periodicjobs_say_so(tqs: TaskQueues, pjs: PeriodicJobs,
                                                                     redis_server: RedisServer) -> None:
    url, ns = redis_server.url, tqs.namespace
    tqs.apply(beat_taskqueue("own", url, beat={"scheduler": CUSTOM_SCHEDULER}))
    beat = wait_for(lambda: tqs.deployment("own-beat"), 30, "the custom beat, even without a PeriodicJob")
    assert beat.spec.template.spec.containers[0].command == ["celery", "-A", "myproject", "beat", "-S",
                                                             CUSTOM_SCHEDULER]
    assert beat.spec.template.spec.containers[0].image == SAMPLE_APP_IMAGE
    assert beat.spec.replicas == 1 and beat.spec.strategy.type == "Recreate"
    tqs.wait_condition("own", "WorkersReady", "True")
    assert tqs.condition("own", "BeatReady") is None, "BeatReady only while PeriodicJobs refer"

    pjs.apply(periodicjob("ignored", "own", "ignored-runs", interval="1s"))
    condition = pjs.wait_ready("ignored", "False", "CustomScheduler")
    assert "spec.beat.scheduler" in condition["message"] and CUSTOM_SCHEDULER in condition["message"]
    wait_for(lambda: tqs.condition("own", "BeatReady"), 15, "BeatReady once a PeriodicJob refers")
    assert redis.Redis.from_url(url).hlen(state_keys(ns, "own")[0]) == 0, "not in the operator's schedule"

    # Back to the operator's own beat: the same Deployment now runs it, and the job starts from now.
    switched = time.time()
    tqs.patch_spec("own", {"beat": {"scheduler": ""}})
    pjs.wait_ready("ignored", "True", "Scheduled", timeout=60)
    assert tqs.deployment("own-beat").spec.template.spec.containers[0].command == [
        "python", "-m", "celery_operator.beat"]
    wait_for(lambda: len(recorded(url, "ignored-runs")) >= 2, 30, "runs from the operator's beat")
    slots = run_slots(url, "ignored-runs", "ignored")
    assert min(slots) > switched, "nothing fired for the time the custom scheduler ran"
    assert_unique(slots)
    assert_consecutive(slots, 1)


def test_an_amqp_taskqueue_keeps_its_schedule_in_a_managed_state_redis(tqs: TaskQueues, pjs: PeriodicJobs,
                                                                       rabbitmq: RabbitBroker,
                                                                       redis_server: RedisServer) -> None:
    record_url = redis_server.url
    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": "rabbit-amqp"},
                                                      "stringData": {"url": rabbitmq.url}})
    body = beat_taskqueue("rabbit", record_url, env=[{"name": "RECORD_REDIS_URL", "value": record_url}])
    body["spec"]["broker"] = {"urlSecretRef": {"name": "rabbit-amqp", "key": "url"}}
    tqs.apply(body)
    pjs.apply(periodicjob("rabbit-tick", "rabbit", "rabbit-runs", interval="2s"))
    pjs.wait_ready("rabbit-tick", "True", "Scheduled", timeout=120)

    secret = tqs.core.read_namespaced_secret("rabbit-beat-state", tqs.namespace)
    values = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert set(values) == {"url", "password"}
    assert values["url"] == f"redis://:{values['password']}@rabbit-beat-state.{tqs.namespace}.svc:6379/0"
    state = tqs.deployment("rabbit-beat-state")
    assert state.metadata.labels["app.kubernetes.io/component"] == "beat"
    assert state.metadata.labels["celery-operator.dev/beat-role"] == "state"
    assert tqs.core.read_namespaced_service("rabbit-beat-state", tqs.namespace).spec.ports[0].port == 6379
    env = {e.name: e for e in tqs.deployment("rabbit-beat").spec.template.spec.containers[0].env}
    assert env["CELERY_OPERATOR_BEAT_STATE_URL"].value_from.secret_key_ref.name == "rabbit-beat-state"

    wait_for(lambda: len(recorded(record_url, "rabbit-runs")) >= 3, 60, "runs through RabbitMQ")
    slots = run_slots(record_url, "rabbit-runs", "rabbit-tick")
    assert_unique(slots)
    assert_consecutive(slots, 2)
    password = values["password"]
    assert password not in tqs.cluster.kubectl("get", "deploy", "-n", tqs.namespace, "-o", "yaml").stdout

    pjs.delete("rabbit-tick")
    wait_for(lambda: tqs.deployment("rabbit-beat") is None and tqs.deployment("rabbit-beat-state") is None, 30,
             "the beat and its state Redis to go with the last PeriodicJob")

    def secret_gone() -> bool:
        try:
            tqs.core.read_namespaced_secret("rabbit-beat-state", tqs.namespace)
            return False
        except kubernetes.client.ApiException as error:
            return error.status == 404

    wait_for(secret_gone, 30, "the state Secret to go")
