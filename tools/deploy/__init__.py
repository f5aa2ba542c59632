"""Deploy the platform to a Kubernetes cluster: render (kustomize), server-side apply, watch rollouts,
report, roll back. `python -m tools.deploy --help`; k8s/README.md describes the cluster path."""
