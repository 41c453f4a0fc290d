"""Names: how a model file's `name` and `tag` become a Kubernetes resource name.

The rule is the seed operator's (`<name>-<tag>`), made safe for any Ollama reference: lowercased,
with every character outside `[a-z0-9.-]` replaced by `-`.
"""

from __future__ import annotations

import re

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


def normalize_reference(reference: str) -> str:
    """Ollama's identity for a reference: `latest` when no tag, and case-insensitive."""
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        reference += ":latest"
    return reference.lower()
