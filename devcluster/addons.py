"""What a cluster needs beyond its control plane and nodes, as manifests (pure): CoreDNS for
cluster DNS (on the Service address the kubelets are told), and rancher's local-path-provisioner
with the default StorageClass, so PersistentVolumeClaims bind to a directory of the node their
pod runs on. Both run from images built here (devcluster/images.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DNS_NAMESPACE = "kube-system"
STORAGE_NAMESPACE = "local-path-storage"
COREDNS_PORT = 1053  # unprivileged: CoreDNS runs as a non-root user without capabilities

COREFILE = f""".:{COREDNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    reload
}}
"""

HELPER_SCRIPT_HEAD = """#!/bin/sh
set -eu
while getopts "m:s:p:" opt; do
  case $opt in
    p) absolutePath=$OPTARG ;;
    s) sizeInBytes=$OPTARG ;;
    m) volMode=$OPTARG ;;
  esac
done
"""


def _restricted_container() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
            "seccompProfile": {"type": "RuntimeDefault"}}


def coredns_manifests(image: str, dns_ip: str) -> list[dict]:
    labels = {"k8s-app": "kube-dns"}
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    container = {
        "name": "coredns", "image": image, "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": COREDNS_PORT, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": COREDNS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "securityContext": _restricted_container(),
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": DNS_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "devcluster:coredns"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "devcluster:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "devcluster:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": DNS_NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": DNS_NAMESPACE},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": DNS_NAMESPACE,
                                                                     "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default", "priorityClassName": "system-cluster-critical",
                      "containers": [container],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": DNS_NAMESPACE,
                                                             "labels": labels},
         "spec": {"clusterIP": dns_ip, "selector": labels, "ports": [
             {"name": "dns", "port": 53, "targetPort": COREDNS_PORT, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": COREDNS_PORT, "protocol": "TCP"}]}},
    ]


def local_path_manifests(image: str, helper_image: str, node_paths: dict[str, Path]) -> list[dict]:
    """The provisioner; each node keeps its volumes in its own directory (`node_paths`)."""
    config = {"nodePathMap": [{"node": node, "paths": [str(path)]} for node, path in sorted(node_paths.items())]}
    helper_pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
        "spec": {"containers": [{"name": "helper-pod", "image": helper_image, "imagePullPolicy": "IfNotPresent"}]},
    }
    labels = {"app": "local-path-provisioner"}
    account = "local-path-provisioner"
    rules = [
        {"apiGroups": [""], "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods/log"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["endpoints", "persistentvolumes", "pods"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
    ]
    container = {
        "name": "local-path-provisioner", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["local-path-provisioner", "start", "--config", "/etc/config/config.json",
                    "--service-account-name", account, "--helper-image", helper_image],
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/config/"}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "securityContext": _restricted_container(),
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STORAGE_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": STORAGE_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "devcluster:local-path-provisioner"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "devcluster:local-path-provisioner"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "devcluster:local-path-provisioner"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": STORAGE_NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "local-path-config", "namespace": STORAGE_NAMESPACE},
         "data": {"config.json": json.dumps(config, indent=2),
                  "setup": HELPER_SCRIPT_HEAD + 'mkdir -m 0777 -p "$absolutePath"\n',
                  "teardown": HELPER_SCRIPT_HEAD + 'rm -rf "$absolutePath"\n',
                  "helperPod.yaml": yaml.safe_dump(helper_pod, sort_keys=False)}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "local-path-provisioner", "namespace": STORAGE_NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": account, "containers": [container],
                      "volumes": [{"name": "config", "configMap": {"name": "local-path-config"}}]}}}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer",
         "reclaimPolicy": "Delete"},
    ]


def as_yaml(manifests: list[dict]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False)
