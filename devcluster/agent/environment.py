"""A container's environment, command and args, resolved the way the kubelet resolves them.

Pure: the Secrets, ConfigMaps and Services a container refers to are fetched by the caller
(`referenced_objects` says which) and handed in as plain data.

Order of resolution (the kubelet's):
1. `envFrom` sources in order (ConfigMaps and Secrets, each key optionally prefixed);
2. `env` entries in order, each overriding what came before: a `value` is `$(VAR)`-expanded
   against what is defined so far plus the service link variables; a `valueFrom` is resolved
   from its source (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef);
3. service link variables (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_...`) for names not defined above;
4. `command` and `args` are expanded against the final environment.
A missing Secret, ConfigMap or key that is not `optional` is a `ContainerConfigError`, which the
agent reports as the waiting reason `CreateContainerConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Mapping

from kubernetes.utils.quantity import parse_quantity

from devcluster.agent.expansion import expand, lookup_in

Pod = Mapping[str, Any]
Container = Mapping[str, Any]


class ContainerConfigError(Exception):
    """The container cannot be started until the cluster holds what its spec refers to."""


@dataclass(frozen=True)
class EnvSources:
    """Decoded data of the Secrets and ConfigMaps a container refers to; None = not found."""

    secrets: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, str] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PodPlacement:
    """What only the node knows about a pod: its IPs and the node's allocatable resources."""

    pod_ip: str
    host_ip: str
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


def referenced_objects(container: Container) -> tuple[set[str], set[str]]:
    """(Secret names, ConfigMap names) the container's env and envFrom refer to."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    for source in container.get("envFrom") or ():
        if source.get("secretRef"):
            secrets.add(source["secretRef"].get("name", ""))
        if source.get("configMapRef"):
            config_maps.add(source["configMapRef"].get("name", ""))
    for variable in container.get("env") or ():
        value_from = variable.get("valueFrom") or {}
        if value_from.get("secretKeyRef"):
            secrets.add(value_from["secretKeyRef"].get("name", ""))
        if value_from.get("configMapKeyRef"):
            config_maps.add(value_from["configMapKeyRef"].get("name", ""))
    return secrets, config_maps


def _not_found(kind: str, name: str) -> ContainerConfigError:
    return ContainerConfigError(f'{kind.lower()} "{name}" not found')


def _usable_env_name(name: str) -> bool:
    # Kubernetes >= 1.34 accepts any printable ASCII but '='; an empty name can never be set.
    return bool(name) and "=" not in name and all(32 <= ord(c) < 127 for c in name)


def _env_from(container: Container, sources: EnvSources) -> dict[str, str]:
    values: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        prefix = source.get("prefix") or ""
        if source.get("configMapRef") is not None:
            reference, kind, pool = source["configMapRef"], "ConfigMap", sources.config_maps
        elif source.get("secretRef") is not None:
            reference, kind, pool = source["secretRef"], "Secret", sources.secrets
        else:
            continue
        name = reference.get("name", "")
        data = pool.get(name)
        if data is None:
            if reference.get("optional"):
                continue
            raise _not_found(kind, name)
        for key, value in data.items():
            if _usable_env_name(prefix + key):
                values[prefix + key] = value
    return values


def field_value(pod: Pod, field_path: str, placement: PodPlacement) -> str:
    """The value of a downward-API field path, as the kubelet renders it."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": placement.host_ip,
        "status.hostIPs": placement.host_ip,
        "status.podIP": placement.pod_ip,
        "status.podIPs": placement.pod_ip,
    }
    if field_path in simple:
        return simple[field_path]
    for prefix, key in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        mapping = metadata.get(key) or {}
        if field_path == prefix:
            return "\n".join(f'{name}="{_escape_quoted(mapping[name])}"' for name in sorted(mapping))
        if field_path.startswith(prefix + "[") and field_path.endswith("]"):
            subscript = field_path[len(prefix) + 1:-1].strip("'\"")
            return mapping.get(subscript, "")
    raise ContainerConfigError(f"unsupported fieldRef fieldPath: {field_path}")


def _escape_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def resource_value(pod: Pod, container: Container, reference: Mapping[str, Any], placement: PodPlacement) -> str:
    """A resourceFieldRef: the container's limit or request, divided by `divisor` and rounded up.
    A limit the container does not set is the node's allocatable amount (as with the kubelet)."""
    target = container
    wanted = reference.get("containerName")
    if wanted and wanted != container.get("name"):
        everyone = [*(pod.get("spec", {}).get("initContainers") or ()), *(pod.get("spec", {}).get("containers") or ())]
        matches = [c for c in everyone if c.get("name") == wanted]
        if not matches:
            raise ContainerConfigError(f"resourceFieldRef: no container named {wanted}")
        target = matches[0]
    resource = reference.get("resource", "")
    kind, _, name = resource.partition(".")
    resources = target.get("resources") or {}
    if kind not in ("limits", "requests") or not name:
        raise ContainerConfigError(f"unsupported resourceFieldRef resource: {resource}")
    declared = (resources.get(kind) or {}).get(name)
    if declared is None and kind == "limits":
        declared = placement.node_allocatable.get(name)
    if declared is None and kind == "requests" and name in ("cpu", "memory", "ephemeral-storage"):
        declared = (resources.get("limits") or {}).get(name)
    amount = parse_quantity(str(declared)) if declared is not None else Decimal(0)
    divisor = parse_quantity(str(reference.get("divisor") or "1"))
    if divisor == 0:
        divisor = Decimal(1)
    if name == "cpu":
        # the kubelet divides milli-values: ceil(milli(amount) / milli(divisor))
        milli = Decimal(math.ceil(amount * 1000))
        milli_divisor = Decimal(math.ceil(divisor * 1000)) or Decimal(1)
        return str(math.ceil(milli / milli_divisor))
    return str(math.ceil(Decimal(math.ceil(amount)) / Decimal(math.ceil(divisor) or 1)))


def _is_master_service(service: Mapping[str, Any]) -> bool:
    metadata = service.get("metadata") or {}
    return metadata.get("name") == "kubernetes" and metadata.get("namespace") == "default"


def service_link_variables(services: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Docker-link style variables for Services with a cluster IP (enableServiceLinks).
    Deliberately unlike the kubelet, the API server's own `kubernetes` Service is left out: without
    KUBERNETES_SERVICE_HOST, clients fall back to KUBECONFIG (the pod's ServiceAccount kubeconfig)."""
    values: dict[str, str] = {}
    for service in sorted(services, key=lambda s: s.get("metadata", {}).get("name", "")):
        if _is_master_service(service):
            continue
        spec = service.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        first = ports[0]
        values[f"{prefix}_SERVICE_HOST"] = ip
        values[f"{prefix}_SERVICE_PORT"] = str(first.get("port"))
        for port in ports:
            if port.get("name"):
                port_name = port["name"].upper().replace("-", "_")
                values[f"{prefix}_SERVICE_PORT_{port_name}"] = str(port.get("port"))
        values[f"{prefix}_PORT"] = f"{(first.get('protocol') or 'TCP').lower()}://{ip}:{first.get('port')}"
        for port in ports:
            protocol = port.get("protocol") or "TCP"
            base = f"{prefix}_PORT_{port.get('port')}_{protocol.upper()}"
            values[base] = f"{protocol.lower()}://{ip}:{port.get('port')}"
            values[f"{base}_PROTO"] = protocol.lower()
            values[f"{base}_PORT"] = str(port.get("port"))
            values[f"{base}_ADDR"] = ip
    return values


def _value_from(pod: Pod, container: Container, value_from: Mapping[str, Any], placement: PodPlacement,
                sources: EnvSources) -> str | None:
    """The value of one valueFrom; None when an optional source or key is missing (skip the var)."""
    namespace = pod.get("metadata", {}).get("namespace", "")
    if value_from.get("fieldRef"):
        return field_value(pod, value_from["fieldRef"].get("fieldPath", ""), placement)
    if value_from.get("resourceFieldRef"):
        return resource_value(pod, container, value_from["resourceFieldRef"], placement)
    for key, kind, pool in (("configMapKeyRef", "ConfigMap", sources.config_maps),
                            ("secretKeyRef", "Secret", sources.secrets)):
        reference = value_from.get(key)
        if not reference:
            continue
        name, wanted = reference.get("name", ""), reference.get("key", "")
        optional = bool(reference.get("optional"))
        data = pool.get(name)
        if data is None:
            if optional:
                return None
            raise _not_found(kind, name)
        if wanted not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {wanted} in {kind} {namespace}/{name}")
        return data[wanted]
    raise ContainerConfigError("unsupported valueFrom source")


def container_env(pod: Pod, container: Container, placement: PodPlacement, sources: EnvSources,
                  services: Iterable[Mapping[str, Any]] = ()) -> dict[str, str]:
    """The variables Kubernetes defines for the container (not the image's own), in order."""
    enable_links = (pod.get("spec") or {}).get("enableServiceLinks", True) is not False
    service_env = service_link_variables(services) if enable_links else {}
    defined = _env_from(container, sources)
    lookup = lookup_in(defined, service_env)
    for variable in container.get("env") or ():
        name = variable.get("name", "")
        if variable.get("value"):
            value: str | None = expand(variable["value"], lookup)
        elif variable.get("valueFrom"):
            value = _value_from(pod, container, variable["valueFrom"], placement, sources)
            if value is None:
                continue
        else:
            value = ""
        service_env.pop(name, None)
        defined[name] = value
    for name, value in service_env.items():
        defined.setdefault(name, value)
    return defined


def expanded_command(container: Container, environment: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` references expanded against the container's environment."""
    lookup = lookup_in(environment)
    return [expand(str(part), lookup) for part in [*(container.get("command") or ()), *(container.get("args") or ())]]
