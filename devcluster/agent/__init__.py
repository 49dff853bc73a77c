"""The devcluster node agent: a kubelet stand-in that runs every pod bound to its Node as
processes of this machine. Test and demo infrastructure only; a real cluster uses the kubelet.

What it does, and how it differs from a kubelet:

- Node: registered with the machine's capacity (cpu, memory, ephemeral storage, pods=500),
  kept alive with a Lease in kube-node-lease (renewed every 10 s) and a status heartbeat.
- Images are ignored. A container's `command` + `args` run with the project's `.venv/bin` first
  on PATH and `<project root>/app` on PYTHONPATH, in the pod's directory
  `<cluster dir>/pods/<namespace>_<pod>/` (also HOME). stdout and stderr go to
  `logs/<container>.log` there (`python -m devcluster logs NS/POD`). A container without
  `command` waits with reason `ImageEntrypointNotRunnable`: there is no image entrypoint to run.
- Volumes are NOT emulated: no emptyDir, no ConfigMap/Secret files, no mounts; processes share
  the pod directory. securityContext (users, capabilities, seccomp) is not applied either:
  every process runs as the agent's user.
- Networking: every pod gets its own loopback address from `--pod-network` (status.podIP);
  the network's first address is the node's (status.hostIP). Services are proxied in userspace
  on their cluster IPs (added to `lo`), endpoints computed from the ready pods; Service names
  (`svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) are written into a marked block of
  /etc/hosts so pods and host processes resolve them. KUBERNETES_SERVICE_HOST is never set.
- Hostname: every container runs in a UTS namespace of its own named after the pod
  (`unshare --uts`), and HOSTNAME is the pod name.
- ServiceAccount: a bound token (TokenRequest) becomes `serviceaccount/kubeconfig` in the pod
  directory and KUBECONFIG of the pod's processes.
- Environment, probes, lifecycle hooks, restart policies with crash-loop back-off, init and
  sidecar containers, status and conditions, termination (preStop, SIGTERM to the main process
  only, SIGKILL to the container's whole session after the grace period, then the final status
  and the API delete) follow the kubelet. A signal N ends a container with exit code 128+N.

Its own lifecycle: process records (pid + start time + boot ID) are kept in each pod directory.
On SIGTERM the agent stops watching, stops its Service proxies, removes its /etc/hosts block and
the loopback addresses it added, and exits, LEAVING THE POD PROCESSES RUNNING: an agent started
again adopts the containers of pods that still exist (and reads their exit codes when they end)
and kills what was left for pods that are gone. `cleanup(cluster_dir)`, called by
`devcluster down` after the agent stopped, kills every recorded pod process and undoes the host
changes.
"""

from devcluster.agent.cleanup import cleanup

__all__ = ["cleanup"]
