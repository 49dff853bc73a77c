"""Container environment resolution as the kubelet does it: sources, order, expansion, errors."""

from __future__ import annotations

import pytest

from devcluster.agent.environment import (
    ContainerConfigError,
    EnvSources,
    PodPlacement,
    container_env,
    expanded_command,
    field_value,
    referenced_objects,
    service_link_variables,
)

pytestmark = pytest.mark.unit

PLACEMENT = PodPlacement(pod_ip="127.150.0.7", host_ip="127.150.0.1",
                         node_allocatable={"cpu": "2", "memory": "4Gi"})


def make_pod(container: dict, **spec: object) -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                     "labels": {"app": "web", "tier": "front"}, "annotations": {"note": 'say "hi"'}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "robot", "containers": [container], **spec},
    }


def env_of(container: dict, sources: EnvSources = EnvSources(), services: list | None = None, **spec) -> dict:
    return container_env(make_pod(container, **spec), container, PLACEMENT, sources, services or [])


def test_values_expand_against_earlier_variables_only() -> None:
    container = {"name": "c", "env": [
        {"name": "LATER_REF", "value": "[$(B)]"},
        {"name": "A", "value": "a"},
        {"name": "B", "value": "$(A)-b"},
        {"name": "ESCAPED", "value": "$$(A)"},
        {"name": "UNKNOWN", "value": "$(NOPE)"},
        {"name": "EMPTY"},
    ]}
    assert env_of(container) == {"LATER_REF": "[$(B)]", "A": "a", "B": "a-b", "ESCAPED": "$(A)",
                                 "UNKNOWN": "$(NOPE)", "EMPTY": ""}


def test_env_overrides_env_from_and_prefix_applies() -> None:
    sources = EnvSources(config_maps={"cfg": {"MODE": "fast", "COLOR": "blue"}},
                         secrets={"sec": {"TOKEN": "t0p"}})
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "APP_"},
                                          {"secretRef": {"name": "sec"}}],
                 "env": [{"name": "APP_MODE", "value": "slow:$(TOKEN)"}]}
    assert env_of(container, sources) == {"APP_MODE": "slow:t0p", "APP_COLOR": "blue", "TOKEN": "t0p"}


def test_key_refs_resolve_and_optional_ones_are_skipped() -> None:
    sources = EnvSources(secrets={"sec": {"password": "hunter2"}}, config_maps={"cfg": {"level": "debug"}})
    container = {"name": "c", "env": [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
        {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k", "optional": True}}},
        {"name": "NOKEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": True}}},
    ]}
    assert env_of(container, sources) == {"PASSWORD": "hunter2", "LEVEL": "debug"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"secretKeyRef": {"name": "missing", "key": "k"}}, 'secret "missing" not found'),
        ({"configMapKeyRef": {"name": "missing", "key": "k"}}, 'configmap "missing" not found'),
        ({"secretKeyRef": {"name": "sec", "key": "other"}}, "couldn't find key other in Secret shop/sec"),
        ({"configMapKeyRef": {"name": "cfg", "key": "other"}}, "couldn't find key other in ConfigMap shop/cfg"),
    ],
)
def test_missing_required_sources_are_config_errors(entry: dict, message: str) -> None:
    sources = EnvSources(secrets={"sec": {"password": "x"}, "missing": None},
                         config_maps={"cfg": {"level": "x"}, "missing": None})
    container = {"name": "c", "env": [{"name": "X", "valueFrom": entry}]}
    with pytest.raises(ContainerConfigError, match=message):
        env_of(container, sources)


def test_missing_env_from_source_fails_unless_optional() -> None:
    container = {"name": "c", "envFrom": [{"secretRef": {"name": "missing"}}]}
    with pytest.raises(ContainerConfigError, match='secret "missing" not found'):
        env_of(container, EnvSources(secrets={"missing": None}))
    container["envFrom"][0]["secretRef"]["optional"] = True
    assert env_of(container, EnvSources(secrets={"missing": None})) == {}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "web-1"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "web"),
        ("metadata.labels['absent']", ""),
        ("metadata.annotations['note']", 'say "hi"'),
        ("metadata.labels", 'app="web"\ntier="front"'),
        ("spec.nodeName", "node-a"),
        ("spec.serviceAccountName", "robot"),
        ("status.podIP", "127.150.0.7"),
        ("status.podIPs", "127.150.0.7"),
        ("status.hostIP", "127.150.0.1"),
    ],
)
def test_field_refs(path: str, expected: str) -> None:
    assert field_value(make_pod({"name": "c"}), path, PLACEMENT) == expected


def test_resource_field_refs_use_limits_requests_divisor_and_node_allocatable() -> None:
    container = {"name": "c", "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}},
                 "env": [
                     {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                           "divisor": "1Mi"}}},
                     {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                     {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu",
                                                                              "divisor": "1m"}}},
                     {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                 ]}
    assert env_of(container) == {"MEM_MI": "256", "CPU_REQ": "1", "CPU_REQ_M": "250", "CPU_LIMIT": "2"}


SERVICES = [
    {"metadata": {"name": "redis-main", "namespace": "shop"},
     "spec": {"clusterIP": "10.150.0.9", "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}]}},
    {"metadata": {"name": "headless", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
]


def test_service_links_look_like_docker_links() -> None:
    assert service_link_variables(SERVICES) == {
        "REDIS_MAIN_SERVICE_HOST": "10.150.0.9",
        "REDIS_MAIN_SERVICE_PORT": "6379",
        "REDIS_MAIN_SERVICE_PORT_REDIS": "6379",
        "REDIS_MAIN_PORT": "tcp://10.150.0.9:6379",
        "REDIS_MAIN_PORT_6379_TCP": "tcp://10.150.0.9:6379",
        "REDIS_MAIN_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_MAIN_PORT_6379_TCP_PORT": "6379",
        "REDIS_MAIN_PORT_6379_TCP_ADDR": "10.150.0.9",
    }


def test_the_api_servers_own_service_gives_no_variables() -> None:
    master = {"metadata": {"name": "kubernetes", "namespace": "default"},
              "spec": {"clusterIP": "10.150.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}
    assert service_link_variables([master]) == {}
    env = env_of({"name": "c"}, services=[master])
    assert not any(name.startswith("KUBERNETES_") for name in env)


def test_service_links_are_expandable_overridable_and_can_be_disabled() -> None:
    container = {"name": "c", "env": [{"name": "URL", "value": "redis://$(REDIS_MAIN_SERVICE_HOST)"},
                                      {"name": "REDIS_MAIN_PORT", "value": "mine"}]}
    env = env_of(container, services=SERVICES)
    assert env["URL"] == "redis://10.150.0.9"
    assert env["REDIS_MAIN_PORT"] == "mine"
    assert "KUBERNETES_SERVICE_HOST" not in env
    assert env_of(container, services=SERVICES, enableServiceLinks=False) == {
        "URL": "redis://$(REDIS_MAIN_SERVICE_HOST)", "REDIS_MAIN_PORT": "mine"}


def test_command_and_args_expand_against_the_final_environment() -> None:
    container = {"command": ["redis-server", "--bind", "$(POD_IP)"], "args": ["--port", "$(PORT)", "$$(POD_IP)",
                                                                              "$(MISSING)"]}
    assert expanded_command(container, {"POD_IP": "127.1.0.2", "PORT": "6379"}) == [
        "redis-server", "--bind", "127.1.0.2", "--port", "6379", "$(POD_IP)", "$(MISSING)"]


def test_referenced_objects_lists_every_secret_and_config_map() -> None:
    container = {"envFrom": [{"secretRef": {"name": "s1"}}, {"configMapRef": {"name": "c1"}}],
                 "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
                         {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}},
                         {"name": "C", "value": "plain"}]}
    assert referenced_objects(container) == ({"s1", "s2"}, {"c1", "c2"})
