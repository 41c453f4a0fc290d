"""ollama-gitops: keep the Ollama models of a fleet in line with YAML files in Git.

One import package, so that installing the project adds nothing else to site-packages:
- `ollama_gitops.reconciler` holds the reconciler and everything the API shares with it (the model
  file format, desired state loaded from Git, the Git, Ollama and Kubernetes edges);
- `ollama_gitops.api` holds the HTTP API and the commands built on it.

Installed, those are folders of this package (setup.cfg's `package_dir` puts them there). In a source
checkout they are the folders `reconciler/` and `api/` beside this one, so the package also works
from a checkout put on `sys.path` without installing it (the benchmarks run that way).
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "setup.cfg").is_file() and (_checkout / "reconciler" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # a package's own __path__
