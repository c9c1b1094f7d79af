"""Distributed jobs: one typed description (`spec.JobSpec`), rendered for Slurm and Kubernetes.

Renderers are pure (a JobSpec in, a script or manifests out) and golden-tested; submitting what
they render is the job of the thin adapters `cudabox.slurm` and `cudabox.kube`.
"""
