"""What the builders do for safety by default: Flower's login, which pods get an API token, default
resource requests, and the managed Redis' maxmemory below its memory limit."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from celery_operator import builders
from celery_operator.builders.beat import BeatOptions, build_beat_deployment
from celery_operator.builders.broker import broker_max_memory_bytes, build_broker_deployment
from celery_operator.builders.flower import build_flower, build_flower_deployment
from celery_operator.builders.worker import build_worker_deployment
from celery_operator.models import SpecError, TaskQueueSpec, parse_taskqueue_spec
from tests.unit.test_builders import BASE, IMAGES, OWNER, PASSWORD, container, decoded, env_by_name

pytestmark = pytest.mark.unit

FLOWER_PASSWORD = "generated-flower-pw"
OAUTH = {"provider": "github", "allowedEmails": r".*@acme\.com", "clientId": "Iv1.abc",
         "clientSecretRef": {"name": "gh-oauth", "key": "secret"}, "redirectUri": "https://flower.acme.com/login"}


def parse(**changes: Any) -> TaskQueueSpec:
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return parse_taskqueue_spec(spec)


def flower_container(spec: TaskQueueSpec) -> dict[str, Any]:
    return container(build_flower_deployment(OWNER, spec, IMAGES.flower))


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


# --- Flower's login ---------------------------------------------------------------------------------


def test_flower_without_auth_settings_asks_for_a_generated_login() -> None:
    spec = parse(flower={"enabled": True})
    assert spec.flower.auth == "basic" and spec.flower.generated_password
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in build_flower(OWNER, spec, IMAGES.flower,
                                                                             password=FLOWER_PASSWORD)}
    secret = manifests[("Secret", "shop-flower")]
    assert decoded(secret) == {"username": "admin", "password": FLOWER_PASSWORD, "auth": f"admin:{FLOWER_PASSWORD}"}
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "flower"
    env = env_by_name(container(manifests[("Deployment", "shop-flower")]))
    assert env["FLOWER_BASIC_AUTH"] == {"name": "FLOWER_BASIC_AUTH", "valueFrom": {
        "secretKeyRef": {"name": "shop-flower", "key": "auth"}}}
    assert FLOWER_PASSWORD not in json.dumps(manifests[("Deployment", "shop-flower")])
    with pytest.raises(ValueError):
        build_flower(OWNER, spec, IMAGES.flower)


def test_flower_takes_the_users_logins_from_their_secret() -> None:
    spec = parse(flower={"enabled": True, "basicAuthSecretRef": {"name": "flower-logins", "key": "users"}})
    assert not spec.flower.generated_password
    kinds = [m["kind"] for m in build_flower(OWNER, spec, IMAGES.flower)]
    assert kinds == ["Deployment", "Service"], "no generated Secret"
    env = env_by_name(flower_container(spec))
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"] == {"secretKeyRef": {"name": "flower-logins", "key": "users"}}


def test_flower_oauth_passes_flowers_own_settings_with_the_secret_from_a_secret() -> None:
    spec = parse(flower={"enabled": True, "oauth": OAUTH})
    assert spec.flower.auth == "oauth", "oauth set: auth defaults to oauth"
    env = env_by_name(flower_container(spec))
    assert env["FLOWER_AUTH_PROVIDER"]["value"] == "flower.views.auth.GithubLoginHandler"
    assert env["FLOWER_AUTH"]["value"] == r".*@acme\.com"
    assert env["FLOWER_OAUTH2_KEY"]["value"] == "Iv1.abc"
    assert env["FLOWER_OAUTH2_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "gh-oauth", "key": "secret"}}
    assert env["FLOWER_OAUTH2_REDIRECT_URI"]["value"] == "https://flower.acme.com/login"
    assert "FLOWER_BASIC_AUTH" not in env


def test_flower_auth_none_is_an_explicit_opt_out() -> None:
    spec = parse(flower={"enabled": True, "auth": "none"})
    assert [m["kind"] for m in build_flower(OWNER, spec, IMAGES.flower)] == ["Deployment", "Service"]
    assert not {name for name in env_by_name(flower_container(spec)) if name.startswith("FLOWER_")} - {"FLOWER_DB"}


@pytest.mark.parametrize("flower, field", [
    ({"auth": "oauth"}, "spec.flower.oauth"),
    ({"auth": "basic", "oauth": OAUTH}, "spec.flower.oauth"),
    ({"oauth": OAUTH, "basicAuthSecretRef": {"name": "a", "key": "b"}}, "spec.flower.basicAuthSecretRef"),
    ({"auth": "none", "basicAuthSecretRef": {"name": "a", "key": "b"}}, "spec.flower.basicAuthSecretRef"),
    ({"auth": "open"}, "spec.flower.auth"),
    ({"oauth": {**OAUTH, "provider": "myspace"}}, "spec.flower.oauth.provider"),
    ({"oauth": {key: value for key, value in OAUTH.items() if key != "clientSecretRef"}},
     "spec.flower.oauth.clientSecretRef.name"),
    ({"extraArgs": "--debug"}, "spec.flower.extraArgs"),
])
def test_flower_auth_settings_that_contradict_each_other_are_refused(flower: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse(flower={"enabled": True, **flower})
    assert error.value.field == field


def test_flower_env_and_extra_args_pass_through_but_cannot_replace_the_login_or_the_broker() -> None:
    spec = parse(flower={"enabled": True, "extraArgs": ["--purge_offline_workers=60"], "env": [
        {"name": "FLOWER_PERSISTENT", "value": "true"},
        {"name": "FLOWER_DB", "value": "/data/flower.db"},
        {"name": "FLOWER_BASIC_AUTH", "value": "eve:let-me-in"},
        {"name": "CELERY_BROKER_URL", "value": "redis://elsewhere"},
    ]})
    flower = flower_container(spec)
    assert flower["command"] == ["celery", "flower", "--port=5555", "--address=$(POD_IP)",
                                 "--purge_offline_workers=60"]
    env = env_by_name(flower)
    assert env["FLOWER_PERSISTENT"]["value"] == "true"
    assert env["FLOWER_DB"]["value"] == "/data/flower.db", "flower.env replaces our default"
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "shop-flower"
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "shop-broker", "key": "url"}
    assert len(flower["env"]) == len(env), "no duplicate names (server-side apply keys env by name)"


def test_flower_runs_read_only_writing_only_to_tmp_without_a_token() -> None:
    deployment = build_flower_deployment(OWNER, parse(flower={"enabled": True}), IMAGES.flower)
    flower = container(deployment)
    assert flower["securityContext"]["readOnlyRootFilesystem"] is True
    assert flower["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod_spec(deployment)["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert env_by_name(flower)["FLOWER_DB"]["value"].startswith("/tmp/"), "persistent mode writes to the emptyDir"
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    spec = parse(flower={"enabled": True}, serviceAccountName="shop")
    assert pod_spec(build_flower_deployment(OWNER, spec, IMAGES.flower))["automountServiceAccountToken"] is False


# --- API tokens ----------------------------------------------------------------------------------------


def test_only_workers_with_a_service_account_get_an_api_token() -> None:
    spec = parse()
    assert pod_spec(build_worker_deployment(OWNER, spec, spec.queues[0]))["automountServiceAccountToken"] is False
    spec = parse(serviceAccountName="shop")
    worker = pod_spec(build_worker_deployment(OWNER, spec, spec.queues[0]))
    assert worker["serviceAccountName"] == "shop"
    assert "automountServiceAccountToken" not in worker, "the ServiceAccount's own setting decides"


def test_the_broker_and_the_operators_beat_never_get_a_token_a_custom_beat_like_workers() -> None:
    spec = parse(serviceAccountName="shop")
    assert spec.broker.managed is not None
    assert pod_spec(build_broker_deployment(OWNER, spec.broker.managed, IMAGES.redis))[
        "automountServiceAccountToken"] is False
    own = build_beat_deployment(OWNER, spec, BeatOptions(custom=False), IMAGES.beat)
    assert pod_spec(own)["automountServiceAccountToken"] is False
    custom = parse(beat={"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"})
    assert pod_spec(build_beat_deployment(OWNER, custom, BeatOptions(custom=True), IMAGES.beat))[
        "automountServiceAccountToken"] is False
    custom = parse(serviceAccountName="shop", beat={"scheduler": "x:Y"})
    assert "automountServiceAccountToken" not in pod_spec(
        build_beat_deployment(OWNER, custom, BeatOptions(custom=True), IMAGES.beat))


def test_every_pod_but_those_with_a_service_account_goes_without_a_token() -> None:
    spec = parse(flower={"enabled": True}, beat={"scheduler": "x:Y"})
    children = builders.desired_children(OWNER, spec, images=IMAGES, broker_password=PASSWORD,
                                         beat=BeatOptions(custom=True), flower_password=FLOWER_PASSWORD)
    deployments = [c for c in children if c["kind"] == "Deployment"]
    assert len(deployments) == 5
    assert all(pod_spec(d)["automountServiceAccountToken"] is False for d in deployments)


# --- resources -------------------------------------------------------------------------------------------


def test_celery_pods_get_default_requests_and_only_our_own_code_a_memory_limit() -> None:
    """Workers and a custom scheduler run the user's app: requests only. The operator's beat and
    Flower have known footprints: a memory limit well above them stops only a leak."""
    spec = parse(flower={"enabled": True})
    worker = container(build_worker_deployment(OWNER, spec, spec.queues[0]))
    assert worker["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}}
    beat = container(build_beat_deployment(OWNER, spec, BeatOptions(custom=False), IMAGES.beat))
    assert beat["resources"] == {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    custom = parse(beat={"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"})
    custom_beat = container(build_beat_deployment(OWNER, custom, BeatOptions(custom=True), IMAGES.beat))
    assert custom_beat["resources"] == {"requests": {"cpu": "10m", "memory": "64Mi"}}
    assert flower_container(spec)["resources"] == {"requests": {"cpu": "10m", "memory": "64Mi"},
                                                   "limits": {"memory": "512Mi"}}


def test_flower_is_restarted_when_it_stops_answering_but_not_while_it_starts() -> None:
    flower = flower_container(parse(flower={"enabled": True}))
    assert flower["livenessProbe"]["httpGet"] == {"path": "/healthcheck", "port": "http"}
    startup = flower["startupProbe"]
    assert startup["httpGet"] == flower["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_resources_of_the_spec_replace_the_default_as_a_whole() -> None:
    own = {"limits": {"memory": "1Gi"}}
    spec = parse(workers={"resources": own}, beat={"resources": own}, flower={"enabled": True, "resources": own},
                 queues=[{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "2"}}}])
    assert container(build_worker_deployment(OWNER, spec, spec.queue("a")))["resources"] == own
    assert container(build_worker_deployment(OWNER, spec, spec.queue("b")))["resources"] == {
        "requests": {"cpu": "2"}}
    assert container(build_beat_deployment(OWNER, spec, BeatOptions(custom=False), IMAGES.beat))["resources"] == own
    assert flower_container(spec)["resources"] == own


# --- the managed broker's memory ----------------------------------------------------------------------------


def redis_of(managed: dict[str, Any]) -> dict[str, Any]:
    spec = parse(broker={"managed": managed})
    assert spec.broker.managed is not None
    return container(build_broker_deployment(OWNER, spec.broker.managed, IMAGES.redis))


def maxmemory_args(redis: dict[str, Any]) -> list[str]:
    args = redis["args"]
    return args[args.index("--maxmemory"):] if "--maxmemory" in args else []


def test_the_default_broker_refuses_writes_at_80_percent_of_its_memory_limit() -> None:
    redis = redis_of({})
    assert redis["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert maxmemory_args(redis) == ["--maxmemory", "214748364", "--maxmemory-policy", "noeviction"]
    assert 214748364 < 256 * 1024 * 1024


@pytest.mark.parametrize("managed, expected", [
    ({"resources": {"limits": {"memory": "1Gi"}}}, 858993459),
    ({"resources": {"limits": {"memory": "500M"}}}, 400000000),
    ({"resources": {"limits": {"memory": 104857600}}}, 83886080),
    ({"resources": {"limits": {"memory": "1Gi"}}, "maxMemory": "900Mi"}, 900 * 1024 * 1024),
    ({"resources": {"requests": {"memory": "1Gi"}}}, None),
    ({"resources": {"requests": {"memory": "1Gi"}}, "maxMemory": "512Mi"}, 512 * 1024 * 1024),
])
def test_maxmemory_follows_the_effective_memory_limit_unless_set(managed: dict[str, Any],
                                                                 expected: int | None) -> None:
    spec = parse(broker={"managed": managed})
    assert spec.broker.managed is not None
    assert broker_max_memory_bytes(spec.broker.managed) == expected
    redis = redis_of(managed)
    if expected is None:
        assert maxmemory_args(redis) == []
    else:
        assert maxmemory_args(redis) == ["--maxmemory", str(expected), "--maxmemory-policy", "noeviction"]


@pytest.mark.parametrize("managed", [
    {"resources": {"limits": {"memory": "256Mi"}}, "maxMemory": "256Mi"},
    {"resources": {"limits": {"memory": "256Mi"}}, "maxMemory": "1Gi"},
    {"maxMemory": "0"},
    {"maxMemory": "lots"},
])
def test_a_maxmemory_at_or_over_the_limit_or_not_a_quantity_is_refused(managed: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as error:
        parse(broker={"managed": managed})
    assert error.value.field == "spec.broker.managed.maxMemory"


def test_the_beat_state_redis_gets_requests_and_no_maxmemory() -> None:
    children = builders.beat.build_beat_state(OWNER, "pw", IMAGES.redis)
    redis = container(next(c for c in children if c["kind"] == "Deployment"))
    assert redis["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}}
    assert maxmemory_args(redis) == []
