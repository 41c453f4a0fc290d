"""ollama-gitops: keep the Ollama models of a fleet in line with YAML files in Git.

The `reconciler` package holds everything the reconciler and the API share: the model file
format, desired state loaded from Git, and the Git access. The `api` package imports it.
"""

__version__ = "0.1.0"
