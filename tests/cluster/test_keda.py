"""KEDA runs for real in a devcluster of its own (devcluster/keda_deploy.py): its external metrics
API answers through the aggregation layer, and a ScaledObject with KEDA's Redis-list scaler takes a
Deployment from zero when a message arrives on a host Redis, its HPA scaling on from there. On the
same cluster, last, the KEDA benchmark's quick run (bench/bench_keda.py) against the operator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import bench_keda, figures
from devcluster import images, keda, keda_deploy
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.waiting import holds_for, wait_for

pytestmark = [
    pytest.mark.cluster,
    # the first test's share includes KEDA's build when `make test` still runs it (14 minutes cold,
    # measured beside the other real tiers on 2 cores), a cluster's start and KEDA's rollout
    pytest.mark.timeout(1800),
]

ROOT = Path(__file__).resolve().parents[2]
NAME = "keda-sleeper"
LIST = "keda-test-queue"


@pytest.fixture(scope="module")
def keda_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    keda.ensure()  # built, or waited for while `make test` builds it beside the other modules
    images.build_images(["keda"])
    with own_cluster(tmp_path_factory.mktemp("keda") / "cluster", nodes=1) as handle:
        keda_deploy.deploy(handle.dir)
        yield handle


@pytest.fixture
def redis_server(keda_cluster: DevCluster, tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", host=keda_cluster.host_ip)
    yield server
    server.stop()


def _deployment(image: str) -> dict:
    labels = {"app": NAME}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": "default"},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "sleep", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "infinity"]}]}}},
    }


def _scaled_object(redis: RedisServer) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "scaleTargetRef": {"name": NAME}, "pollingInterval": 1, "minReplicaCount": 0, "maxReplicaCount": 3,
            "triggers": [{"type": "redis", "metadata": {
                "address": f"{redis.host}:{redis.port}", "listName": LIST, "listLength": "1"}}],
        },
    }


def _get(cluster: DevCluster, *what: str) -> dict:
    return json.loads(cluster.kubectl("get", *what, "-o", "json").stdout)


def _replicas(cluster: DevCluster) -> int:
    return _get(cluster, "deployment", "-n", "default", NAME)["spec"].get("replicas", 0)


def _condition(found: dict, kind: str) -> dict:
    return next((c for c in found.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def test_external_metrics_api_is_served_through_the_aggregator(keda_cluster: DevCluster) -> None:
    served = json.loads(keda_cluster.kubectl("get", "--raw", keda_deploy.EXTERNAL_METRICS_PATH).stdout)
    assert served["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    apiservice = _get(keda_cluster, "apiservice", keda_deploy.APISERVICE)
    assert _condition(apiservice, "Available").get("status") == "True"
    assert apiservice["spec"].get("caBundle"), "the operator's certificate rotation writes the CA it serves with"


def test_redis_list_scaler_activates_from_zero_and_its_hpa_scales_on(
        keda_cluster: DevCluster, redis_server: RedisServer, record_property) -> None:
    image = images.build_images(["sample-app"])["sample-app"].reference
    keda_cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_deployment(image)))
    keda_cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_scaled_object(redis_server)))
    wait_for(lambda: _condition(_get(keda_cluster, "scaledobject", "-n", "default", NAME), "Ready")
             .get("status") == "True", 60, "the ScaledObject to be Ready")
    hpa_name = f"keda-hpa-{NAME}"
    wait_for(lambda: keda_cluster.kubectl("get", "hpa", "-n", "default", hpa_name, check=False).returncode == 0,
             30, "the HPA KEDA makes for the ScaledObject")
    holds_for(lambda: _replicas(keda_cluster) == 0, 3, "an empty list keeping the Deployment at zero")

    with redis_server.client() as client:
        client.rpush(LIST, "first")
    pushed = time.monotonic()
    wait_for(lambda: _replicas(keda_cluster) >= 1, 30, "KEDA to activate the Deployment 0 -> 1")
    activation = time.monotonic() - pushed
    record_property("keda_activation_seconds", round(activation, 2))
    print(f"KEDA activation 0 -> 1: {activation:.2f}s after the first message")

    # 1 -> N is the HPA's alone: it reads KEDA's external metric through the aggregation layer
    with redis_server.client() as client:
        client.rpush(LIST, "second", "third")
    wait_for(lambda: _replicas(keda_cluster) == 3, 90, "the HPA to scale the Deployment to 3 (3 messages, listLength 1)")
    hpa = _get(keda_cluster, "hpa", "-n", "default", hpa_name)
    assert _condition(hpa, "ScalingActive").get("status") == "True", hpa["status"]
    external = [m["external"] for m in hpa["status"].get("currentMetrics", []) if m.get("type") == "External"]
    assert external and external[0]["metric"]["name"].startswith("s0-redis-"), hpa["status"]
    assert external[0]["current"].get("averageValue"), hpa["status"]
    print(f"HPA read the external metric, {time.monotonic() - pushed:.1f}s from the first message to 3 replicas")
    keda_cluster.kubectl("delete", "scaledobject,deployment", "-n", "default", NAME, "--wait=false")


BENCH_TABLES = ("First message on a queue at zero", "Drain:", "A burst", "Priorities:", "Scale-down safety:", "Idle:")


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_the_keda_benchmark_measures_every_cell_in_its_quick_run(keda_cluster: DevCluster) -> None:
    """bench/bench_keda.py --quick on this cluster (KEDA deployed by the fixture): KEDA's defaults,
    KEDA tuned and the chart's operator, every scenario once. A cell it could not measure makes it
    exit non-zero naming the cell; a table missing from its output fails here. Last in the module: it
    leaves the chart, its namespace and KEDA's objects behind."""
    figures_file = keda_cluster.dir / "bench-figures.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_keda.py"), "--quick",
                             "--cluster", str(keda_cluster.dir), "--figures", str(figures_file)],
                            capture_output=True, text=True, timeout=2300, cwd=ROOT)
    report = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, report
    for title in BENCH_TABLES:
        assert f"**{title}" in result.stdout, f"no table {title!r}\n{report}"
    assert bench_keda.NOT_MEASURED not in result.stdout, report
    headline = figures.parse(figures_file.read_text())
    assert headline and all(f.unit == "×" and f.value > 0 for f in headline), headline
