"""A reconciler keeping a fleet: the rig of `rig.py`, with several stand-in Ollama servers (each its
own HTTP server on loopback) listed in a servers file the test rewrites while it runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.ollama.inventory import FileInventory
from ollama_gitops.reconciler.ollama.server import OllamaServer
from ollama_gitops.reconciler.reconcile import Reconciler
from ollama_gitops.reconciler.state import ModelStatus
from rig import CATALOGUE, Rig
from standins.ollama_server import OllamaStandin


class FleetRig(Rig):
    def __init__(self, tmp_path: Path, labels: Mapping[str, Mapping[str, str]]) -> None:
        self.ollamas = {name: OllamaStandin(CATALOGUE).start() for name in labels}
        super().__init__(tmp_path, next(iter(self.ollamas.values())))
        self.servers_file = tmp_path / "servers.yaml"
        self.write_servers(labels)

    def write_servers(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        """The servers file, listing these servers (by name) with these labels."""
        servers = [{"name": name, "url": self.ollamas[name].url, "labels": dict(server_labels)}
                   for name, server_labels in labels.items()]
        self.servers_file.write_text(yaml.safe_dump({"servers": servers}))

    def start(self, **options: object) -> Reconciler:
        options.setdefault("client_factory", lambda server: OllamaServer(server.url, timeout=30))
        return super().start(**options)

    def servers(self) -> object:
        return FileInventory(self.servers_file)

    def on(self, server: str, namespace: str, name: str) -> ModelStatus | None:
        """The model's status on one server (None: not planned there)."""
        assert self.reconciler is not None
        record = self.reconciler.store.record(ModelKey(namespace, name))
        return record.servers.get(server) if record is not None else None

    def holding(self, reference: str) -> set[str]:
        """The servers that have `reference` installed."""
        return {name for name, ollama in self.ollamas.items() if reference in ollama.installed()}

    def close(self) -> None:
        self.stop()
        for ollama in self.ollamas.values():
            ollama.stop()
        self.work.close()
