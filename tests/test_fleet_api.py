"""The fleet in the API and `status` (issue 12): a model's seed fields are the whole over the servers
its `servers:` selector picks, its additive `servers` list shows it on each, `GET /api/v1/servers`
shows the servers, and `status` draws the models by servers.

The catalog is exercised on a real state store (records written and read back as the reconciler
writes them); the endpoints through real HTTP against `api` following that store's files, as it
runs beside a reconciler in another process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from apirig import API_KEY, ApiRig
from ollama_gitops.api.app import _openapi_document
from ollama_gitops.api.catalog import Catalog
from ollama_gitops.api.statusview import Snapshot, render
from ollama_gitops.reconciler.models.desired import DesiredModel, DesiredState, ModelKey, Problem
from ollama_gitops.reconciler.models.modelfile import ModelFields
from ollama_gitops.reconciler.models.selector import LabelSelector, Requirement
from ollama_gitops.reconciler.state import (FAILED, PENDING, PULLING, READY, AppliedSpec, ModelRecord, ModelStatus,
                                            ServerSeen, StateStore, SyncStatus)
from waiting import eventually

DIGEST = "a" * 64
SIZE = 1815319791
SEEN = "2026-12-01T11:00:00Z"
A100 = LabelSelector.of({"gpu": "a100"})
ANY_GPU = LabelSelector.of(None, Requirement("gpu", "Exists", ()))
H100 = LabelSelector.of({"gpu": "h100"})
FLEET = (ServerSeen("cpu-1", "http://cpu-1:11434", {}, True, "0.6.2", SEEN),
         ServerSeen("gpu-1", "http://gpu-1:11434", {"gpu": "a100", "zone": "eu"}, True, "0.6.2", SEEN),
         ServerSeen("gpu-2", "http://gpu-2:11434", {"gpu": "l4"}, False, "0.6.1", "2026-12-01T10:00:00Z",
                    "connection refused"))


def _schema(name: str) -> jsonschema.Draft202012Validator:
    document = json.loads(_openapi_document())
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": document["components"]})


def ready(**changes: object) -> ModelStatus:
    status = ModelStatus(READY, size=SIZE, digest=DIGEST, last_pull_time="2026-12-01T09:00:00Z", owned=True)
    for name, value in changes.items():
        setattr(status, name, value)
    return status


class Fixture:
    """A state store with records of several servers, the desired state, and the catalog over them."""

    def __init__(self, directory: Path) -> None:
        self.store = StateStore(directory)
        self.store.acquire_process_lock()
        self.models: dict[ModelKey, DesiredModel] = {}
        self.problems: tuple[Problem, ...] = ()
        self.unreadable: frozenset[ModelKey] = frozenset()
        self.catalog = Catalog(self.desired, self.store)

    def desired(self) -> DesiredState:
        return DesiredState("c" * 40, dict(self.models), self.problems, self.unreadable)

    def model(self, name: str, servers: LabelSelector | None = None, **statuses: ModelStatus) -> ModelKey:
        """A model file `name:1b` placed by `servers`, recorded with `statuses` (server name -> status)."""
        key = ModelKey("default", f"{name}-1b")
        path = f"models/default/{name}-1b.yaml"
        self.models[key] = DesiredModel(key, ModelFields(name, "1b", servers=servers), path, "b" * 40)
        if statuses:
            with self.store.editing() as edit:
                edit.put(key, ModelRecord(AppliedSpec(f"{name}:1b", path),
                                          {server.replace("_", "-"): s for server, s in statuses.items()}))
        return key

    def inventory(self, *servers: ServerSeen) -> None:
        self.store.save_sync(SyncStatus(servers=servers))

    def view(self, key: ModelKey) -> dict:
        view = self.catalog.get(key.namespace, key.name)
        assert view is not None
        _schema("Model").validate(view)
        return view

    def close(self) -> None:
        self.store.release_process_lock()


@pytest.fixture
def fleet(tmp_path: Path):
    fixture = Fixture(tmp_path / "state")
    fixture.inventory(*FLEET)
    yield fixture
    fixture.close()


def test_a_model_on_every_server_shows_each_and_the_whole(fleet: Fixture) -> None:
    pulling = ModelStatus(PULLING, progress_completed=100, progress_total=400)
    key = fleet.model("llama3.2", cpu_1=ready(), gpu_1=ready(), gpu_2=pulling)
    view = fleet.view(key)
    assert view == {
        "name": "llama3.2-1b", "namespace": "default", "modelName": "llama3.2", "tag": "1b", "state": "Pulling",
        "size": SIZE, "formattedSize": "1.7 GiB", "lastPullTime": "2026-12-01T09:00:00Z",
        "progress": {"completed": 100, "total": 400}, "digest": DIGEST,
        "servers": [
            {"name": "cpu-1", "state": "Ready", "size": SIZE, "formattedSize": "1.7 GiB", "digest": DIGEST,
             "lastPullTime": "2026-12-01T09:00:00Z"},
            {"name": "gpu-1", "state": "Ready", "size": SIZE, "formattedSize": "1.7 GiB", "digest": DIGEST,
             "lastPullTime": "2026-12-01T09:00:00Z"},
            {"name": "gpu-2", "state": "Pulling", "progress": {"completed": 100, "total": 400}},
        ]}
    # The list shows the same view.
    items = json.loads(fleet.catalog.list_json("default"))["items"]
    assert items == [view]
    _schema("ModelList").validate({"items": items})


def test_only_the_servers_the_selector_picks_are_shown_and_counted(fleet: Fixture) -> None:
    key = fleet.model("big", A100, gpu_1=ready(state=FAILED, error="out of disk", size=None, digest=None))
    view = fleet.view(key)
    assert view["state"] == "Failed" and view["error"] == "gpu-1: out of disk"
    assert view["servers"] == [{"name": "gpu-1", "state": "Failed", "lastPullTime": "2026-12-01T09:00:00Z",
                                "error": "out of disk"}]
    gpus = fleet.model("gpus", ANY_GPU, gpu_1=ready())  # gpu-2 selected but never planned there yet
    view = fleet.view(gpus)
    assert view["state"] == "Pending" and [(s["name"], s["state"]) for s in view["servers"]] == [
        ("gpu-1", "Ready"), ("gpu-2", "Pending")]
    assert view["servers"][1] == {"name": "gpu-2", "state": "Pending"}


def test_a_selector_matching_no_server_is_pending_and_says_so(fleet: Fixture) -> None:
    key = fleet.model("nowhere", H100)
    view = fleet.view(key)
    assert view["state"] == "Pending" and view["servers"] == []
    assert view["error"] == "no server matches the model's servers selector"


@pytest.mark.parametrize(("states", "whole"), [
    ((FAILED, PULLING, READY), FAILED),
    ((READY, PULLING, PENDING), PULLING),
    ((READY, PENDING, READY), PENDING),
    ((READY, None, READY), PENDING),  # no entry on one server: never planned there yet
    ((READY, READY, READY), READY),
], ids=["failed-wins", "pulling-over-pending", "pending-over-ready", "no-entry-is-pending", "all-ready"])
def test_states_combine_failed_pulling_pending_ready(fleet: Fixture, states: tuple, whole: str) -> None:
    statuses = {name: ModelStatus(state) for name, state in zip(("cpu_1", "gpu_1", "gpu_2"), states) if state}
    view = fleet.view(fleet.model("m", **statuses))
    assert view["state"] == whole
    assert [s["state"] for s in view["servers"]] == [state or PENDING for state in states]


def test_a_changed_inventory_changes_the_list_at_once(fleet: Fixture) -> None:
    """The list is cached per commit and status version; what the inventory says is part of it."""
    key = fleet.model("big", A100, gpu_1=ready())
    assert json.loads(fleet.catalog.list_json("default"))["items"][0]["state"] == "Ready"
    relabelled = tuple(ServerSeen(s.name, s.url, {"gpu": "l4"} if s.name == "gpu-1" else s.labels, True)
                       for s in FLEET)
    fleet.inventory(*relabelled)  # no record changed
    listed = json.loads(fleet.catalog.list_json("default"))["items"][0]
    assert listed["state"] == "Pending" and listed["servers"] == [] and listed == fleet.view(key)


def test_servers_joining_leaving_or_relabelled_change_the_cached_list_without_a_write(fleet: Fixture) -> None:
    """A list keeps each model's bytes while its file and record are unchanged; which servers its
    selector picks is part of what they are made from, so an inventory change (no write, no record
    changed, the status version where it was) reserialises exactly the models it moves."""
    big = fleet.model("big", A100, gpu_1=ready())
    gpus = fleet.model("gpus", ANY_GPU, gpu_1=ready(), gpu_2=ready())
    everywhere = fleet.model("tiny", None, cpu_1=ready(), gpu_1=ready(), gpu_2=ready())
    stats, version = fleet.catalog.stats, fleet.store.version

    def listed() -> dict[str, dict]:
        items = json.loads(fleet.catalog.list_json("default"))["items"]
        assert items == [fleet.view(k) for k in sorted((big, gpus, everywhere))]  # the list agrees with GET
        return {item["name"]: item for item in items}

    def servers(item: dict) -> list[tuple[str, str]]:
        return [(s["name"], s["state"]) for s in item["servers"]]

    assert {name: item["state"] for name, item in listed().items()} == dict.fromkeys(
        ("big-1b", "gpus-1b", "tiny-1b"), "Ready")
    serialised = stats.serialised
    # A server joins with an A100: the two models that select it are Pending there, the third is not moved.
    fleet.inventory(*FLEET, ServerSeen("gpu-3", "http://gpu-3:11434", {"gpu": "a100"}, True, "0.6.2", SEEN))
    now = listed()
    assert servers(now["big-1b"]) == [("gpu-1", "Ready"), ("gpu-3", "Pending")] and now["big-1b"]["state"] == "Pending"
    assert now["gpus-1b"]["state"] == "Pending" and ("gpu-3", "Pending") in servers(now["gpus-1b"])
    assert now["tiny-1b"]["state"] == "Pending" and ("gpu-3", "Pending") in servers(now["tiny-1b"])
    assert stats.serialised - serialised == 3
    # It leaves again: back as they were, byte for byte.
    serialised = stats.serialised
    fleet.inventory(*FLEET)
    assert {name: item["state"] for name, item in listed().items()} == dict.fromkeys(
        ("big-1b", "gpus-1b", "tiny-1b"), "Ready")
    assert stats.serialised - serialised == 3
    # gpu-1 relabelled away from A100 (still a GPU): only `big` moves, and no server matches it now.
    serialised = stats.serialised
    fleet.inventory(*(ServerSeen(s.name, s.url, {"gpu": "l4"}, s.reachable, s.version, s.last_seen)
                      if s.name == "gpu-1" else s for s in FLEET))
    now = listed()
    assert now["big-1b"]["state"] == "Pending" and now["big-1b"]["servers"] == []
    assert now["big-1b"]["error"] == "no server matches the model's servers selector"
    assert now["gpus-1b"]["state"] == "Ready" and now["tiny-1b"]["state"] == "Ready"
    assert stats.serialised - serialised == 1
    # A server's reachability alone shows in the servers endpoint, not in the models' lists.
    serialised = stats.serialised
    fleet.inventory(*(dataclasses.replace(s, reachable=False, error="connection refused") for s in
                      fleet.store.sync.servers))
    listed()
    assert stats.serialised == serialised
    assert fleet.store.version == version  # none of it was a record's change


def test_a_broken_files_model_is_shown_on_the_servers_it_is_recorded_on(fleet: Fixture) -> None:
    key = fleet.model("kept", A100, gpu_1=ready(), gpu_2=ready())
    del fleet.models[key]
    fleet.unreadable = frozenset({key})
    fleet.problems = (Problem("models/default/kept-1b.yaml", "YAML syntax error", 2),)
    view = fleet.view(key)
    assert view["state"] == "Ready" and view["error"].startswith("model file is invalid, keeping the last good version")
    assert [s["name"] for s in view["servers"]] == ["gpu-1", "gpu-2"]
    assert "error" not in view["servers"][0]  # the why is the whole's, each server's status is its own


# -- one server named `default`: the seed's JSON, byte for byte -----------------------------------------

SEED_READY = {"name": "llama3.2-1b", "namespace": "default", "modelName": "llama3.2", "tag": "1b", "state": "Ready",
              "size": SIZE, "formattedSize": "1.7 GiB", "lastPullTime": "2026-12-01T09:00:00Z", "error": "slow disk",
              "digest": DIGEST}


@pytest.mark.parametrize("inventory", [(ServerSeen("default", "http://localhost:11434"),), ()],
                         ids=["default-server", "inventory-not-recorded-yet"])
def test_one_default_server_shows_the_seeds_fields_only(tmp_path: Path, inventory: tuple) -> None:
    fixture = Fixture(tmp_path / "state")
    try:
        fixture.inventory(*inventory)
        key = fixture.model("llama3.2", default=ready(error="slow disk"))
        fresh = fixture.model("gemma3")  # no record yet
        assert fixture.view(key) == SEED_READY  # the bare error, no `servers`
        assert json.dumps(fixture.view(key)) == json.dumps(SEED_READY)  # the same order too
        assert fixture.view(fresh) == {"name": "gemma3-1b", "namespace": "default", "modelName": "gemma3",
                                       "tag": "1b", "state": "Pending"}
        assert fixture.catalog.new_view(fresh, ModelFields("gemma3", "1b")) == fixture.view(fresh)
    finally:
        fixture.close()


def test_a_new_model_in_a_fleet_is_pending_on_the_servers_it_selects(fleet: Fixture) -> None:
    view = fleet.catalog.new_view(ModelKey("default", "phi3-mini"), ModelFields("phi3", "mini", servers=ANY_GPU))
    assert view == {"name": "phi3-mini", "namespace": "default", "modelName": "phi3", "tag": "mini",
                    "state": "Pending", "servers": [{"name": "gpu-1", "state": "Pending"},
                                                    {"name": "gpu-2", "state": "Pending"}]}


# -- GET /api/v1/servers, and `status`, against `api` beside a reconciler's state files -------------------

@pytest.fixture
def api_beside(tmp_path: Path, ollama):
    """`api` alone (no reconciler), following a state directory this test writes as the reconciler does."""
    fixture = Fixture(tmp_path / "state")
    rig = ApiRig(tmp_path, ollama, with_reconciler=False, state_dir=tmp_path / "state")
    rig.work.model("default", "llama3.2", "1b")
    rig.work.model("default", "big", "1b", extra="servers:\n  matchLabels: {gpu: a100}\n")
    rig.seed()
    rig.start()
    yield rig, fixture
    rig.stop()
    fixture.close()


def _records(fixture: Fixture) -> None:
    with fixture.store.editing() as edit:
        edit.put(ModelKey("default", "llama3.2-1b"), ModelRecord(
            AppliedSpec("llama3.2:1b", "models/default/llama3.2-1b.yaml"),
            {"cpu-1": ready(), "gpu-1": ready(), "gpu-2": ModelStatus(FAILED, error="server gpu-2 unreachable: refused")}))
        edit.put(ModelKey("default", "big-1b"), ModelRecord(
            AppliedSpec("big:1b", "models/default/big-1b.yaml"), {"gpu-1": ModelStatus(PULLING)}))


def test_servers_endpoint_lists_each_server_with_reachability_and_counts(api_beside) -> None:
    rig, fixture = api_beside
    assert rig.client.get("/api/v1/servers").json() == {"items": []}  # no cycle has recorded an inventory
    _records(fixture)
    fixture.inventory(*FLEET)
    answer = eventually(lambda: (r := rig.client.get("/api/v1/servers")).json()["items"] and r, what="the servers")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    _schema("ServerList").validate(body)
    assert body["items"] == [
        {"name": "cpu-1", "url": "http://cpu-1:11434", "labels": {}, "reachable": True, "version": "0.6.2",
         "lastSeen": SEEN, "models": {"Ready": 1, "Pending": 0, "Pulling": 0, "Failed": 0}, "error": None},
        {"name": "gpu-1", "url": "http://gpu-1:11434", "labels": {"gpu": "a100", "zone": "eu"}, "reachable": True,
         "version": "0.6.2", "lastSeen": SEEN, "models": {"Ready": 1, "Pending": 0, "Pulling": 1, "Failed": 0},
         "error": None},
        {"name": "gpu-2", "url": "http://gpu-2:11434", "labels": {"gpu": "l4"}, "reachable": False,
         "version": "0.6.1", "lastSeen": "2026-12-01T10:00:00Z",
         "models": {"Ready": 0, "Pending": 0, "Pulling": 0, "Failed": 1}, "error": "connection refused"}]
    # Authenticated like the rest.
    assert rig.client.get("/api/v1/servers", headers={"X-API-Key": "wrong"}).status_code == 401

    # The models, from the same files: `big` only where its selector points.
    models = {m["name"]: m for m in rig.client.get("/api/v1/models").json()["items"]}
    assert [s["name"] for s in models["big-1b"]["servers"]] == ["gpu-1"] and models["big-1b"]["state"] == "Pulling"
    assert models["llama3.2-1b"]["state"] == "Failed"
    assert models["llama3.2-1b"]["error"] == "gpu-2: server gpu-2 unreachable: refused"

    # A write's answer is the new model on the servers its selector picks.
    created = rig.client.post("/api/v1/models", json={"name": "phi3", "tag": "mini",
                                                      "servers": {"matchLabels": {"gpu": "l4"}}})
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "phi3-mini", "namespace": "default", "modelName": "phi3", "tag": "mini",
                              "state": "Pending", "servers": [{"name": "gpu-2", "state": "Pending"}]}


def test_status_draws_models_by_servers_and_exits_1_for_a_model_failed_on_one(
        api_beside, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_gitops.api.cli import main

    rig, fixture = api_beside
    _records(fixture)
    fixture.inventory(*FLEET)
    eventually(lambda: rig.client.get("/api/v1/servers").json()["items"], what="the servers")
    monkeypatch.setenv("OLLAMA_GITOPS_API_KEY", API_KEY)
    capsys.readouterr()
    code = main(["status", "--api-url", rig.url])
    out = capsys.readouterr().out
    assert code == 1, out  # llama3.2 Failed on gpu-2
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.split()[:4] == ["NAME", "cpu-1", "gpu-1", "gpu-2"]))
    assert [line.split() for line in lines[start + 1:start + 3]] == [
        ["big-1b", "-", "Pulling", "-"], ["llama3.2-1b", "Ready", "Ready", "Failed"]]
    servers = [line for line in lines if line.startswith("server ")]
    assert servers == [
        f"server cpu-1 (http://cpu-1:11434): reachable, Ollama 0.6.2, last seen {SEEN}; "
        "models: 1 Ready, 0 Pending, 0 Pulling, 0 Failed",
        f"server gpu-1 (http://gpu-1:11434): reachable, Ollama 0.6.2, last seen {SEEN}; "
        "models: 1 Ready, 0 Pending, 1 Pulling, 0 Failed",
        "server gpu-2 (http://gpu-2:11434): UNREACHABLE: connection refused, last seen 2026-12-01T10:00:00Z; "
        "models: 0 Ready, 0 Pending, 0 Pulling, 1 Failed"]


def test_status_with_one_default_server_draws_what_it_always_did() -> None:
    model = {"name": "llama3.2-1b", "modelName": "llama3.2", "tag": "1b", "state": "Ready"}
    sync = {"lastCycleOutcome": "Succeeded"}
    default = [{"name": "default", "url": "http://localhost:11434", "reachable": True, "models": {}}]
    assert render(Snapshot([model], sync, default)) == render(Snapshot([model], sync))
    assert "server " not in render(Snapshot([model], sync, default))
    one_named = [{**default[0], "name": "gpu-1"}]
    assert "server gpu-1 (http://localhost:11434): reachable" in render(Snapshot([model], sync, one_named))


def test_status_without_an_inventory_takes_the_servers_from_the_models() -> None:
    """`api` alone in Kubernetes mode reads no reconciler's summary: the models still say where they are."""
    model = {"name": "big-1b", "modelName": "big", "tag": "1b", "state": "Ready",
             "servers": [{"name": "gpu-1", "state": "Ready"}, {"name": "gpu-2", "state": "Pulling"}]}
    lines = render(Snapshot([model], {})).splitlines()
    assert [line.split() for line in lines[3:5]] == [["NAME", "gpu-1", "gpu-2"], ["big-1b", "Ready", "Pulling"]]


def test_serve_with_a_servers_file_shows_each_model_on_each_server_and_a_server_down(
        tmp_path: Path, ollama) -> None:
    """`serve` keeping the default server and two of a servers file (stand-ins on loopback, in process)."""
    import yaml

    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    with OllamaStandin(dict(CATALOGUE)) as gpu_1, OllamaStandin(dict(CATALOGUE)) as gpu_2:
        servers_file = tmp_path / "servers.yaml"
        servers_file.write_text(yaml.safe_dump({"servers": [
            {"name": "gpu-1", "url": gpu_1.url, "labels": {"gpu": "a100"}},
            {"name": "gpu-2", "url": gpu_2.url, "labels": {"gpu": "l4"}}]}))
        rig = ApiRig(tmp_path, ollama, extra_args=("--servers-file", str(servers_file)))
        rig.work.model("default", "llama3.2", "1b")
        rig.work.model("default", "gemma3", "1b", extra="servers:\n  matchLabels: {gpu: a100}\n")
        rig.seed()
        rig.start()
        try:
            rig.settle()
            servers = rig.client.get("/api/v1/servers").json()["items"]
            _schema("ServerList").validate({"items": servers})
            assert [(s["name"], s["url"], s["reachable"], s["version"], s["models"]["Ready"]) for s in servers] == [
                ("default", ollama.url, True, "0.12.0", 1), ("gpu-1", gpu_1.url, True, "0.12.0", 2),
                ("gpu-2", gpu_2.url, True, "0.12.0", 1)]
            models = {m["name"]: m for m in rig.client.get("/api/v1/models").json()["items"]}
            assert [(s["name"], s["state"]) for s in models["gemma3-1b"]["servers"]] == [("gpu-1", "Ready")]
            assert [(s["name"], s["state"]) for s in models["llama3.2-1b"]["servers"]] == [
                ("default", "Ready"), ("gpu-1", "Ready"), ("gpu-2", "Ready")]
            assert models["llama3.2-1b"]["state"] == "Ready" and models["llama3.2-1b"]["formattedSize"] == "1.7 GiB"

            gpu_2.stop()
            rig.work.model("default", "phi3", "mini")
            rig.publish("add phi3")  # its pull on gpu-2 is refused: the next cycle lists gpu-2, and fails
            down = eventually(lambda: [s for s in rig.client.get("/api/v1/servers").json()["items"]
                                       if s["name"] == "gpu-2" and s["reachable"] is False], what="gpu-2 unreachable")
            assert "not reachable" in down[0]["error"] and down[0]["lastSeen"] is not None
            llama = rig.client.get("/api/v1/models/llama3.2-1b").json()
            on_2 = next(s for s in llama["servers"] if s["name"] == "gpu-2")
            assert on_2["state"] == "Ready" and on_2["error"].startswith("server gpu-2 unreachable: ")
            assert llama["error"].startswith("gpu-2: server gpu-2 unreachable: ")
        finally:
            rig.stop()
