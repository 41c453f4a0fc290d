"""How much a pull would download, per server: the manifest's blobs in the registry, minus those the
server already holds. The `Sizes` of a plan preview (preview.py).

Each reference is looked up once per preview, each blob asked of a server once. A registry that
cannot be reached or does not answer in time is not asked again within the same preview (a dead
mirror costs one timeout, not one per model); any answer that is not a manifest leaves the size
unknown, never fails the plan.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from .registry import BlobHolder, Manifest, ManifestUnknown, RegistryClient, download_bytes, parse_reference
from .server import ModelOperationFailed, ServerUnreachable


class RegistrySizes:
    """`preview.Sizes` from a registry and the servers' blobs (`holders`: by server name; a server
    without a holder has its sizes unknown)."""

    def __init__(self, registry: RegistryClient, holders: Mapping[str, BlobHolder | None]) -> None:
        self._registry = registry
        self._holders = holders
        self._lock = threading.Lock()
        self._manifests: dict[str, Manifest | None] = {}
        self._dead_hosts: set[str] = set()
        self._held: dict[tuple[str, str], bool | None] = {}
        self.unknown: dict[str, str] = {}  # reference -> why its manifest is not known

    def manifest(self, reference: str) -> Manifest | None:
        """The manifest of `reference`, or None (why: `unknown[reference]`)."""
        with self._lock:
            if reference in self._manifests:
                return self._manifests[reference]
            resolved = parse_reference(reference)
            host = resolved.host if resolved is not None else ""
            if host in self._dead_hosts:
                self.unknown[reference] = f"the registry {host} did not answer earlier in this plan"
                self._manifests[reference] = None
                return None
        found = self._registry.manifest(reference)
        with self._lock:
            if isinstance(found, Manifest):
                self._manifests[reference] = found
                return found
            self._manifests[reference] = None
            self.unknown[reference] = found.message if not isinstance(found, ManifestUnknown) else found.reason
            if isinstance(found, ManifestUnknown) and ("not reachable" in found.reason or "in time" in found.reason):
                self._dead_hosts.add(host)
            return None

    def download_bytes(self, server: str, reference: str) -> int | None:
        manifest = self.manifest(reference)
        holder = self._holders.get(server)
        if manifest is None or holder is None:
            return None
        present = set()
        for blob in manifest.blobs:
            held = self._holds(server, holder, blob.digest)
            if held is None:
                return None
            if held:
                present.add(blob.digest)
        return download_bytes(manifest, present)

    def upstream_digest(self, reference: str) -> str | None:
        manifest = self.manifest(reference)
        return manifest.ollama_digest if manifest is not None else None

    def _holds(self, server: str, holder: BlobHolder, digest: str) -> bool | None:
        key = (server, digest)
        with self._lock:
            if key in self._held:
                return self._held[key]
        try:
            held: bool | None = holder.has_blob(digest)
        except (ServerUnreachable, ModelOperationFailed):
            held = None
        with self._lock:
            self._held[key] = held
        return held
