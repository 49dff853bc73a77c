"""Where the agent keeps things in the cluster directory.

    <cluster dir>/pods/<namespace>_<pod>/       one per pod: the processes' working directory and HOME
        pod.json                                 the pod's UID, name and IP (which pod the directory is for)
        run/<container>.json                     the running container's pid, start time and boot ID
        logs/<container>.log                     stdout and stderr of every run of the container
        serviceaccount/{token,ca.crt,namespace,kubeconfig}
    <cluster dir>/agent/                         the agent's own: client credentials, kubelet serving
                                                 certificate, loopback addresses it added
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MAX_NAME_LENGTH = 240  # file names stop at 255 bytes; a pod name may have 253 characters


def pod_dir_name(namespace: str, name: str) -> str:
    full = f"{namespace}_{name}"
    if len(full.encode()) <= MAX_NAME_LENGTH:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:12]
    return f"{full[:MAX_NAME_LENGTH - 13]}-{digest}"


def pod_dir(cluster_dir: Path, namespace: str, name: str) -> Path:
    return cluster_dir / "pods" / pod_dir_name(namespace, name)
