"""Names: how a model file's `name` and `tag` become a Kubernetes resource name.

The rule is the seed operator's (`<name>-<tag>`), made safe for any Ollama reference: lowercased,
with every character outside `[a-z0-9.-]` replaced by `-`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_UNSAFE = re.compile(r"[^a-z0-9.-]")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253


def resource_name(name: str, tag: str) -> str:
    """The resource name for model `name:tag`, e.g. `llama3:8b-instruct-q4_K_M` -> `llama3-8b-instruct-q4-k-m`."""
    return _UNSAFE.sub("-", f"{name}-{tag}".lower())


def ollama_reference(name: str, tag: str) -> str:
    """The reference Ollama knows the model by: `name:tag`."""
    return f"{name}:{tag}"


def dns1123_label_error(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (a namespace name), or None when it is one."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be at most {DNS1123_LABEL_MAX} characters (has {len(value)})"
    if not _DNS1123_LABEL.fullmatch(value):  # fullmatch: `$` alone lets a trailing newline through
        return "must consist of lower case letters, digits and '-', and start and end with a letter or digit"
    return None


def dns1123_subdomain_error(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (a resource name), or None when it is one."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be at most {DNS1123_SUBDOMAIN_MAX} characters (has {len(value)})"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "must consist of lower case letters, digits, '-' and '.', "
            "and start and end with a letter or digit"
        )
    return None


DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class OllamaName:
    """A model name in Ollama's four parts (ollama/ollama `types/model/name.go`, `Name`)."""

    host: str
    namespace: str
    model: str
    tag: str

    def display_shortest(self) -> str:
        """The form `/api/tags` lists a model by: the default host, and then the default namespace,
        left out (compared case-insensitively, as Ollama's `DisplayShortest` does)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse_name(reference: str) -> OllamaName:
    """Split `[[scheme://]host/][namespace/]model[:tag]` as Ollama's `ParseName` does: from the
    right (a colon before the last `/` is a port, not a tag), with the defaults filled in. Like
    Ollama's, it does not validate: a part promised by a separator but empty is `MISSING_PART`."""
    host = namespace = tag = ""
    rest = reference
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = _cut_promised(rest, ":")
    if "/" not in rest:
        model = rest
    else:
        rest, model = _cut_promised(rest, "/")
        if "/" not in rest:
            namespace = rest
        else:
            rest, namespace = _cut_promised(rest, "/")
            host = rest.split("://", 1)[-1]
    return OllamaName(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)


MISSING_PART = "!MISSING!"  # Ollama's marker, which no valid name contains


def _cut_promised(value: str, separator: str) -> tuple[str, str]:
    before, _, after = value.rpartition(separator)
    return before or MISSING_PART, after or MISSING_PART


def normalize_reference(reference: str) -> str:
    """Ollama's identity for a reference, the key every comparison of models uses: the shortest form
    Ollama lists it by (`registry.ollama.ai/library/llama3.2` and `llama3.2:latest` are both
    `llama3.2:latest`; `hf.co/x/y:q4` keeps its host), lowercased, as Ollama matches names with
    `EqualFold`.

    A bare `model[:tag]` (what most model files give) has only the default host and namespace to leave
    out: it is keyed as `parse_name` and `display_shortest` would, without them or a cache (at 100,000
    distinct references every lookup of a bounded cache missed), and one already in that form (lower
    case, a model and a tag) is returned itself, so that nothing is made or kept for it. The others
    are parsed, with a small cache (a cache as large as the models would be their memory)."""
    if "/" not in reference:
        model, colon, tag = reference.rpartition(":")
        if not colon:
            return f"{reference}:{DEFAULT_TAG}".lower()
        if model and tag:
            lowered = reference.lower()
            return reference if lowered == reference else lowered
        return f"{model or MISSING_PART}:{tag or MISSING_PART}".lower()
    return _parsed_reference(reference)


NORMALIZED_CACHE = 4096
"""References with a path whose normal form is kept: a repository's few hosts and namespaces'
models fit; beyond that, a reference is parsed again (microseconds)."""


@lru_cache(maxsize=NORMALIZED_CACHE)
def _parsed_reference(reference: str) -> str:
    return parse_name(reference).display_shortest().lower()
