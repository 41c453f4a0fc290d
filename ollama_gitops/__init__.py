"""ollama-gitops: keep the Ollama models of a fleet in line with YAML files in Git.

One import package, so that installing the project adds nothing else to site-packages:
- `ollama_gitops.reconciler` holds the reconciler and everything the API shares with it (the model
  file format, desired state loaded from Git, the Git, Ollama and Kubernetes edges);
- `ollama_gitops.api` holds the HTTP API and the commands built on it.
"""

__version__ = "0.1.0"
