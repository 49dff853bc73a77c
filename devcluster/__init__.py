"""A local Kubernetes for tests and the demo: a control plane built from Go modules and a node
agent that runs pods as local processes. Test and demo infrastructure only."""
