"""A local Kubernetes for tests and the demo: a control plane built from Go modules and real
nodes (kubelet on containerd) running images built here. Test and demo infrastructure only; it is
not part of the operator's wheel."""
