"""A fleet of Ollama servers kept by one reconciler (issue 12), in process: several stand-in
servers, each its own HTTP server on loopback, listed in a servers file that changes while it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetrig import FleetRig
from waiting import eventually
from ollama_gitops.reconciler.models.desired import ModelKey
from ollama_gitops.reconciler.ollama.inventory import FileProblem, Inventory, Snapshot
from ollama_gitops.reconciler.ollama.server import OllamaServer, Tags
from ollama_gitops.reconciler.state import PENDING, READY

LABELS = {"gpu-1": {"gpu": "a100", "zone": "eu"}, "gpu-2": {"gpu": "l4", "zone": "eu"},
          "gpu-3": {"gpu": "l4", "zone": "us"}}


@pytest.fixture
def fleet(tmp_path: Path):
    rig = FleetRig(tmp_path, LABELS)
    yield rig
    rig.close()


def test_a_model_without_servers_goes_to_every_server(fleet: FleetRig) -> None:
    fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("team-a", "gemma3", "1b")
    fleet.push()
    fleet.start()
    report = fleet.cycle()
    assert report.ok and report.full, report
    assert sorted(report.plans) == ["gpu-1", "gpu-2", "gpu-3"] and "6 pulls" in report.message
    assert fleet.holding("llama3.2:1b") == fleet.holding("gemma3:1b") == set(LABELS)
    assert all(fleet.on(name, "default", "llama3.2-1b").state == READY for name in LABELS)
    seen = fleet.reconciler.store.sync.servers
    assert [(s.name, s.url, dict(s.labels), s.reachable, s.version) for s in seen] == [
        (name, fleet.ollamas[name].url, LABELS[name], True, "0.12.0") for name in LABELS]
    assert all(s.last_seen is not None and s.error is None for s in seen)
    before = {name: len(ollama.requests) for name, ollama in fleet.ollamas.items()}
    fleet.clock.advance(60)
    assert fleet.cycle().noop
    assert {name: len(ollama.requests) for name, ollama in fleet.ollamas.items()} == before  # asks no server


def test_a_server_down_fails_the_cycle_naming_it_while_the_others_go_on_and_nothing_is_deleted(fleet: FleetRig) -> None:
    path = fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    fleet.ollamas["gpu-2"].stop()
    fleet.work.model("default", "gemma3", "1b")
    fleet.work.remove(path)
    fleet.push("add gemma3, remove llama3.2")
    fleet.clock.advance(301)  # a resync: every server is listed
    report = fleet.cycle()
    assert not report.ok and f"server gpu-2 unreachable: Ollama is not reachable at {fleet.ollamas['gpu-2'].url}" \
        in report.message, report
    assert fleet.holding("gemma3:1b") == {"gpu-1", "gpu-3"}
    assert fleet.holding("llama3.2:1b") == {"gpu-2"}  # deleted on the others; nothing done where it cannot be seen
    on_2 = fleet.on("gpu-2", "default", "llama3.2-1b")
    assert on_2.state == READY and on_2.error.startswith("server gpu-2 unreachable: ") and on_2.owned
    assert fleet.on("gpu-2", "default", "gemma3-1b").state == PENDING
    seen = {s.name: s for s in fleet.reconciler.store.sync.servers}
    assert seen["gpu-2"].reachable is False and "not reachable" in seen["gpu-2"].error and seen["gpu-1"].reachable
    fleet.clock.advance(1)
    again = fleet.cycle()  # before the next resync: the down server is tried again, the others are not listed
    assert not again.ok and "server gpu-2 unreachable" in again.message and not again.full

    # it comes back empty (a new disk): filled at once, its old model pruned as its file is gone
    fleet.ollamas["gpu-2"].remove("llama3.2:1b")
    fleet.ollamas["gpu-2"].restart()
    fleet.clock.advance(1)
    back = fleet.cycle()
    assert back.ok, back
    assert fleet.holding("gemma3:1b") == set(LABELS) and fleet.holding("llama3.2:1b") == set()
    assert fleet.on("gpu-2", "default", "gemma3-1b").error is None
    assert fleet.reconciler.store.record(ModelKey("default", "llama3.2-1b")) is None
    assert fleet.ollamas["gpu-1"].delete_count == {"llama3.2:1b": 1} and fleet.ollamas["gpu-2"].delete_count == {}


def test_a_server_emptied_behind_its_back_is_filled_again_by_the_next_resync(fleet: FleetRig) -> None:
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    fleet.ollamas["gpu-3"].remove("llama3.2:1b")  # a new pod, an emptied disk: it never looked down
    fleet.clock.advance(60)
    assert fleet.cycle().noop
    fleet.clock.advance(300)
    report = fleet.cycle()
    assert report.ok and report.full and fleet.holding("llama3.2:1b") == set(LABELS)
    assert [type(a).__name__ for a in report.plans["gpu-3"].actions] == ["Pull"]
    # on the others the resync only records the digest the listing gives (a pull's stream has none)
    assert [(type(a).__name__, a.reason) for name in ("gpu-1", "gpu-2") for a in report.plans[name].actions] == \
        [("MarkReady", "its digest, from the listing")] * 2


def test_a_server_leaving_the_inventory_is_forgotten_and_nothing_is_deleted_on_it(fleet: FleetRig) -> None:
    path = fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("default", "gemma3", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    fleet.write_servers({name: LABELS[name] for name in ("gpu-1", "gpu-2")})
    fleet.work.remove(path)
    fleet.push("remove llama3.2")
    report = fleet.cycle()
    assert report.ok and sorted(report.plans) == ["gpu-1", "gpu-2"], report
    assert fleet.holding("llama3.2:1b") == {"gpu-3"} and fleet.ollamas["gpu-3"].delete_count == {}
    assert [s.name for s in fleet.reconciler.store.sync.servers] == ["gpu-1", "gpu-2"]
    assert {str(k): set(r.servers) for k, r in fleet.reconciler.store.records().items()} == {
        "default/gemma3-1b": {"gpu-1", "gpu-2"}}
    # back in the inventory, it is a server like a new one: what it holds is not ollama-gitops's
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push("llama3.2 again")
    fleet.write_servers(LABELS)
    assert fleet.cycle().ok
    assert fleet.on("gpu-3", "default", "llama3.2-1b").owned is False and fleet.on("gpu-1", "default", "llama3.2-1b").owned


def test_a_server_that_left_while_the_reconciler_was_stopped_is_forgotten_at_its_start(fleet: FleetRig) -> None:
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    fleet.stop()
    fleet.write_servers({name: LABELS[name] for name in ("gpu-1", "gpu-2")})
    fleet.start()
    assert fleet.cycle().ok
    assert set(fleet.reconciler.store.record(ModelKey("default", "llama3.2-1b")).servers) == {"gpu-1", "gpu-2"}
    assert fleet.holding("llama3.2:1b") == set(LABELS) and fleet.ollamas["gpu-3"].delete_count == {}


def test_the_servers_file_is_followed_while_running_and_a_broken_one_keeps_the_last_good_servers(fleet: FleetRig) -> None:
    fleet.write_servers({"gpu-1": LABELS["gpu-1"]})
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok and fleet.holding("llama3.2:1b") == {"gpu-1"}
    fleet.servers_file.write_text("servers:\n  - {name: gpu-2, url: 'http://x:1', labels: {zone: 1}}\n")
    report = fleet.cycle()
    assert not report.ok and f"{fleet.servers_file}:2: " in report.message and "zone" in report.message, report
    assert sorted(report.plans) == ["gpu-1"]  # the last good servers are kept in line meanwhile
    fleet.write_servers(LABELS)
    report = fleet.cycle()
    assert report.ok and fleet.holding("llama3.2:1b") == set(LABELS), report


ON_L4 = "servers:\n  matchLabels: {gpu: l4}\n"
ON_A100 = "servers:\n  matchLabels: {gpu: a100}\n"
NOT_US = "servers:\n  matchExpressions:\n    - {key: zone, operator: NotIn, values: [us]}\n"


def test_placement_by_labels_and_expressions_and_a_change_of_it(fleet: FleetRig) -> None:
    fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("default", "mistral", "7b", ON_L4)
    fleet.work.model("default", "phi3", "mini", NOT_US)
    fleet.work.model("default", "qwen2.5", "0.5b", "servers:\n  matchLabels: {gpu: h100}\n")  # no such server
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    assert fleet.holding("llama3.2:1b") == set(LABELS)
    assert fleet.holding("mistral:7b") == {"gpu-2", "gpu-3"} and fleet.holding("phi3:mini") == {"gpu-1", "gpu-2"}
    assert fleet.holding("qwen2.5:0.5b") == set() and fleet.reconciler.store.record(ModelKey("default", "qwen2.5-0.5b")) is None

    fleet.work.model("default", "mistral", "7b", ON_A100)  # moved to the A100 machine
    fleet.push("mistral to the A100")
    report = fleet.cycle()
    assert report.ok, report
    assert fleet.holding("mistral:7b") == {"gpu-1"}
    assert [(type(a).__name__, a.reason) for a in report.plans["gpu-2"].actions] == [
        ("Delete", "no longer placed on this server")]
    assert fleet.ollamas["gpu-2"].delete_count == fleet.ollamas["gpu-3"].delete_count == {"mistral:7b": 1}
    assert set(fleet.reconciler.store.record(ModelKey("default", "mistral-7b")).servers) == {"gpu-1"}

    fleet.write_servers({**LABELS, "gpu-3": {"gpu": "l4", "zone": "eu"}})  # gpu-3 moves to Europe
    assert fleet.cycle().ok and fleet.holding("phi3:mini") == set(LABELS)


def test_a_one_change_cycle_asks_only_the_servers_the_change_selects(fleet: FleetRig) -> None:
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    before = {name: len(ollama.requests) for name, ollama in fleet.ollamas.items()}
    fleet.work.model("default", "mistral", "7b", ON_A100)
    fleet.push("mistral on the A100")
    fleet.clock.advance(60)
    assert fleet.cycle().ok
    asked = {name: ollama.requests[before[name]:] for name, ollama in fleet.ollamas.items()}
    assert asked["gpu-2"] == asked["gpu-3"] == []
    assert ("POST", "/api/pull") in asked["gpu-1"] and fleet.holding("mistral:7b") == {"gpu-1"}


def settings_of(*args: str):
    from ollama_gitops.api.cli import build_parser
    from ollama_gitops.reconciler.settings import Settings

    parser, _ = build_parser()
    return Settings.from_args(parser.parse_args(["reconcile", "--state-dir", "/tmp/unused", *args]))


def test_the_servers_come_from_repeated_options_the_variable_or_a_servers_file(
        fleet: FleetRig, monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_gitops.reconciler.service import ConfigurationError, inventory_source

    for variable in ("OLLAMA_GITOPS_OLLAMA_URL", "OLLAMA_GITOPS_SERVERS_FILE", "OLLAMA_HOST"):
        monkeypatch.delenv(variable, raising=False)
    assert [s.name for s in inventory_source(settings_of()).refresh().inventory] == ["default"]
    given = settings_of("--ollama-url", "gpu-1=http://gpu-1:11434", "--ollama-url", "http://gpu-2:11434")
    assert [(s.name, s.url) for s in inventory_source(given).refresh().inventory] == [
        ("gpu-1", "http://gpu-1:11434"), ("gpu-2-11434", "http://gpu-2:11434")]
    monkeypatch.setenv("OLLAMA_GITOPS_OLLAMA_URL", "a=http://a:1, b=http://b:2")
    assert inventory_source(settings_of()).refresh().inventory.names == ("a", "b")
    assert inventory_source(settings_of("--ollama-url", "c=http://c:3")).refresh().inventory.names == ("c",)
    with pytest.raises(ConfigurationError, match="OLLAMA_GITOPS_OLLAMA_URL 'ftp://d'"):
        monkeypatch.setenv("OLLAMA_GITOPS_OLLAMA_URL", "ftp://d")
        inventory_source(settings_of())
    monkeypatch.setenv("OLLAMA_GITOPS_OLLAMA_URL", "a=http://a:1, b=http://b:2")
    monkeypatch.setenv("OLLAMA_GITOPS_SERVERS_FILE", str(fleet.servers_file))
    monkeypatch.delenv("OLLAMA_GITOPS_OLLAMA_URL")
    assert inventory_source(settings_of()).refresh().inventory.names == tuple(LABELS)  # no default beside it
    with pytest.raises(ConfigurationError, match="two servers are named 'x'"):
        inventory_source(settings_of("--ollama-url", "x=http://a:1", "--ollama-url", "x=http://b:1"))


def test_the_dry_run_and_the_metrics_are_per_server(fleet: FleetRig) -> None:
    import io

    from ollama_gitops.reconciler.metrics import ModelsByState
    from ollama_gitops.reconciler.service import print_report

    fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("default", "mistral", "7b", ON_A100)
    fleet.push()
    fleet.start()
    out = io.StringIO()
    print_report(fleet.cycle(dry_run=True), out, dry_run=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "server=gpu-1: 2 pulls, 0 deletes, 0 already in Ollama"
    assert "server=gpu-2: 1 pull, 0 deletes, 0 already in Ollama" in lines
    assert lines[-1].startswith("dry run: Succeeded at ")
    assert lines[-1].endswith("would make 4 pulls, 0 deletes, 0 already in Ollama")
    assert fleet.holding("llama3.2:1b") == set()  # a dry run changes nothing
    assert fleet.cycle().ok
    families = {f.name: f for f in ModelsByState(fleet.reconciler.store.records).collect()}
    ready = {s.labels["server"]: s.value for s in families["ollama_gitops_server_models"].samples
             if s.labels["state"] == READY}
    assert ready == {"gpu-1": 2, "gpu-2": 1, "gpu-3": 1}
    store = fleet.reconciler.store
    with store.editing() as edit:  # the wholes differ from each server's: one failed, one pulling
        edit.status(ModelKey("default", "llama3.2-1b"), "gpu-1").state = "Failed"
        edit.status(ModelKey("default", "mistral-7b"), "gpu-1").state = "Pulling"
    samples = lambda collector: [(f.name, s.labels, s.value) for f in collector.collect() for s in f.samples]  # noqa: E731
    # The store's own tally (no copy of every record) says what the records say.
    assert samples(ModelsByState(store.records, store.tally)) == samples(ModelsByState(store.records))
    assert ("ollama_gitops_models", {"state": "Failed"}, 1) in samples(ModelsByState(store.records, store.tally))


def test_the_servers_are_listed_at_once_on_a_full_cycle(fleet: FleetRig) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    gates = [ollama.hold_listings() for ollama in fleet.ollamas.values()]
    with ThreadPoolExecutor(max_workers=1) as pool:
        cycle = pool.submit(fleet.cycle)
        try:
            # each listing has reached its server while none of them has answered: they run together
            assert all(gate.wait_for_listings(1, timeout=60) for gate in gates)
        finally:
            for gate in gates:
                gate.release()
        assert cycle.result(timeout=60).ok
    assert fleet.holding("llama3.2:1b") == set(LABELS)


def test_the_concurrency_is_per_server_so_every_server_pulls_at_once(fleet: FleetRig) -> None:
    for name, tag in (("llama3.2", "1b"), ("gemma3", "1b")):
        fleet.work.model("default", name, tag)
    fleet.push()
    fleet.start(concurrency=1)
    gates = [ollama.hold_pulls() for ollama in fleet.ollamas.values()]
    try:
        assert fleet.cycle(wait=False).ok
        assert all(gate.wait_for_pulls(1, timeout=60) for gate in gates)  # one pull on each server at once
        assert all(gate.held == 1 for gate in gates)  # and no more than one on any: --concurrency 1 each
    finally:
        for gate in gates:
            gate.release()
    assert fleet.reconciler.pulls.wait(timeout=60)
    assert fleet.holding("llama3.2:1b") == fleet.holding("gemma3:1b") == set(LABELS)


class _Blinded:
    """An inventory source that can be cut off, as discovery is when the API server refuses it: no
    servers, and a problem saying why."""

    def __init__(self, inner: object) -> None:
        self.inner, self.blind = inner, False

    def refresh(self) -> Snapshot:
        if self.blind:
            return Snapshot(Inventory(), (FileProblem("the Service's endpoints cannot be listed: 503"),))
        return self.inner.refresh()  # type: ignore[attr-defined]


def test_an_inventory_that_cannot_be_read_forgets_no_server_until_it_can(fleet: FleetRig) -> None:
    source = _Blinded(fleet.servers())
    fleet.servers = lambda: source  # type: ignore[method-assign]
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start()
    assert fleet.cycle().ok
    key = ModelKey("default", "llama3.2-1b")
    owned = {name: status.owned for name, status in fleet.reconciler.store.record(key).servers.items()}
    assert owned == {name: True for name in LABELS}
    for restarted in (False, True):  # cut off while running, and at a start
        if restarted:
            fleet.stop()
            fleet.start()
        source.blind = True
        report = fleet.cycle()
        assert not report.ok and "cannot be listed" in report.message
        assert {n: s.owned for n, s in fleet.reconciler.store.record(key).servers.items()} == owned
        source.blind = False
    # Seen again without gpu-3: only then is it forgotten (and nothing deleted on it).
    fleet.write_servers({name: LABELS[name] for name in ("gpu-1", "gpu-2")})
    assert fleet.cycle().ok
    assert set(fleet.reconciler.store.record(key).servers) == {"gpu-1", "gpu-2"}
    assert all(ollama.delete_count == {} for ollama in fleet.ollamas.values())


def test_a_resync_plans_only_what_the_listings_show_changed_and_finds_drift_made_behind_its_back(fleet: FleetRig) -> None:
    """Issue 16 item 8: a resync lists every server once; an unchanged listing costs no planning
    there; a model removed or replaced behind the reconciler's back is planned (and mended) on the
    server that lists it otherwise, and on no other."""
    fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("default", "gemma3", "1b")
    fleet.work.model("default", "phi3", "mini", 'servers: {matchLabels: {gpu: "l4"}}\n')
    fleet.push()
    fleet.start()
    assert fleet.cycle().everything
    gemma, llama = ModelKey("default", "gemma3-1b"), ModelKey("default", "llama3.2-1b")

    def resync():  # type: ignore[no-untyped-def]
        before = {name: len(ollama.requests) for name, ollama in fleet.ollamas.items()}
        fleet.clock.advance(301)
        report = fleet.cycle()
        assert report.ok and report.full and not report.everything, report.message
        asked = {name: ollama.requests[before[name]:] for name, ollama in fleet.ollamas.items()}
        return report, asked

    # The first resync after the pulls records their digests (a pull's stream does not give it, item 2),
    # planning there only the models pulled; the next, with nothing changed, plans nothing at all.
    report, asked = resync()
    assert {(type(a).__name__, a.reason) for plan in report.plans.values() for a in plan.actions} == {
        ("MarkReady", "its digest, from the listing")}
    report, asked = resync()
    assert all(requests == [("GET", "/api/tags")] for requests in asked.values()), asked  # one listing each
    assert {name: len(plan.specs) for name, plan in report.plans.items()} == {name: 0 for name in LABELS}

    fleet.ollamas["gpu-3"].remove("gemma3:1b")  # by hand, on the host
    fleet.ollamas["gpu-1"].remove("llama3.2:1b")
    fleet.ollamas["gpu-1"].install("llama3.2:1b", 1234)  # pulled again by hand: another size, another digest
    report, asked = resync()
    assert {name: set(plan.specs) for name, plan in report.plans.items()} == {
        "gpu-1": {llama}, "gpu-2": set(), "gpu-3": {gemma}}
    assert [(type(a).__name__, a.reason) for a in report.plans["gpu-3"].actions] == [("Pull", "drift: missing from Ollama")]
    assert [type(a).__name__ for a in report.plans["gpu-1"].actions] == ["MarkReady"]
    assert fleet.holding("gemma3:1b") == set(LABELS) and fleet.on("gpu-1", "default", "llama3.2-1b").size == 1234

    full = fleet.reconciler.run_cycle(full=True)  # every model planned on every server, whatever was kept
    assert full.ok and full.full and full.everything
    assert {name: len(plan.specs) for name, plan in full.plans.items()} == {"gpu-1": 2, "gpu-2": 3, "gpu-3": 3}


class _Decodes(OllamaServer):
    """The real Ollama edge, noting per listing whether it decoded the body or found it byte-identical
    to the last one the fleet kept."""

    def __init__(self, url: str, said: list[str]) -> None:
        super().__init__(url, timeout=30)
        self.said = said

    def tags(self, unless: str | None = None, keep=None) -> Tags:  # type: ignore[no-untyped-def]
        tags = super().tags(unless, keep)
        self.said.append("decoded" if tags.models is not None else "unchanged")
        return tags


def test_a_resync_decodes_only_listings_whose_bytes_changed_and_still_finds_a_pull_undone_by_hand(
        fleet: FleetRig) -> None:
    """Issue 16 item 8: at a resync, a server whose `/api/tags` body is byte-identical to its last
    listing is not decoded and nothing is planned there; a changed byte is decoded and planned. The
    kept listing carries the reconciler's own pulls since, so a pull undone by hand (the body the same
    as before the pull) is drift all the same, found and mended."""
    said: dict[str, list[str]] = {name: [] for name in LABELS}
    urls = {ollama.url: name for name, ollama in fleet.ollamas.items()}
    fleet.work.model("default", "llama3.2", "1b")
    fleet.work.model("default", "gemma3", "1b")
    fleet.push()
    fleet.start(client_factory=lambda server: _Decodes(server.url, said[urls[server.url]]))
    assert fleet.cycle().everything
    llama, phi3 = ModelKey("default", "llama3.2-1b"), ModelKey("default", "phi3-mini")

    def resync() -> tuple[dict[str, set[ModelKey]], dict[str, list[str]]]:
        before = {name: len(listings) for name, listings in said.items()}
        fleet.clock.advance(301)
        report = fleet.cycle()
        assert report.ok and report.full and not report.everything, report.message
        return ({name: set(plan.specs) for name, plan in report.plans.items()},
                {name: listings[before[name]:] for name, listings in said.items()})

    assert resync()[1] == {name: ["decoded"] for name in LABELS}  # the pulls changed every server
    assert resync() == ({name: set() for name in LABELS}, {name: ["unchanged"] for name in LABELS})

    fleet.ollamas["gpu-2"].install("llama3.2:1b", 1234)  # pulled again by hand: another size
    assert resync() == ({"gpu-1": set(), "gpu-2": {llama}, "gpu-3": set()},
                        {"gpu-1": ["unchanged"], "gpu-2": ["decoded"], "gpu-3": ["unchanged"]})

    fleet.work.model("default", "phi3", "mini", 'servers: {matchLabels: {gpu: "l4"}}\n')
    fleet.push("phi3 on the l4 servers")
    fleet.clock.advance(1)
    assert fleet.cycle().ok and fleet.holding("phi3:mini") == {"gpu-2", "gpu-3"}
    fleet.ollamas["gpu-3"].remove("phi3:mini")  # gpu-3 lists byte for byte what it listed before the pull
    planned, listings = resync()
    assert listings == {"gpu-1": ["unchanged"], "gpu-2": ["decoded"], "gpu-3": ["unchanged"]}
    assert planned == {"gpu-1": set(), "gpu-2": {phi3}, "gpu-3": {phi3}}
    assert fleet.holding("phi3:mini") == {"gpu-2", "gpu-3"} and fleet.ollamas["gpu-3"].pull_count["phi3:mini"] == 2


def test_listings_run_in_parallel_bounded_by_the_listing_threads(fleet: FleetRig, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ollama_gitops.reconciler.ollama.fleet import Fleet
    from ollama_gitops.reconciler.ollama.inventory import FileInventory
    from ollama_gitops.reconciler.ollama.server import OllamaServer
    from ollama_gitops.reconciler.state import StateStore

    servers = Fleet(FileInventory(fleet.servers_file), StateStore(tmp_path / "bounded"), listing_threads=2,
                    client_factory=lambda server: OllamaServer(server.url, timeout=30))
    gates = {name: ollama.hold_listings() for name, ollama in fleet.ollamas.items()}
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            listing = pool.submit(servers.list_servers, set(LABELS))
            reached = lambda: {name for name, gate in gates.items() if gate.held}  # noqa: E731
            eventually(lambda: len(reached()) == 2, timeout=60)
            first = reached()
            # both threads are held at a server: the third waits for one of them (no third thread)
            assert sum(gate.held for gate in gates.values()) == 2
            for name in first:
                gates[name].release()
            (last,) = set(LABELS) - first
            assert gates[last].wait_for_listings(1, timeout=60)
            gates[last].release()
            result = listing.result(timeout=60)
        assert {name: sorted(each.observed) for name, each in result.items()} == {name: [] for name in LABELS}
        assert [sum(1 for request in ollama.requests if request == ("GET", "/api/tags"))
                for ollama in fleet.ollamas.values()] == [1, 1, 1]
    finally:
        for gate in gates.values():
            gate.release()
        servers.shutdown()


class _Keeps(OllamaServer):
    """The real Ollama edge, keeping the dict of each listing it decoded."""

    def __init__(self, url: str, decoded: list[dict]) -> None:
        super().__init__(url, timeout=30)
        self.decoded = decoded

    def tags(self, unless: str | None = None, keep=None) -> Tags:  # type: ignore[no-untyped-def]
        tags = super().tags(unless, keep)
        if tags.models is not None:
            self.decoded.append(tags.models)
        return tags


def test_the_kept_listing_is_the_listings_own_dict_not_a_copy_and_pulls_keep_it_current(fleet: FleetRig) -> None:
    """Issue 16 item 6: a server's listing is kept as decoded (no second dict of every entry), and a
    pull's end updates it there."""
    decoded: dict[str, list[dict]] = {name: [] for name in LABELS}
    urls = {ollama.url: name for name, ollama in fleet.ollamas.items()}
    fleet.work.model("default", "llama3.2", "1b")
    fleet.push()
    fleet.start(client_factory=lambda server: _Keeps(server.url, decoded[urls[server.url]]))
    assert fleet.cycle().everything
    for name in LABELS:
        member = fleet.reconciler.fleet.member(name)
        assert member is not None and member.observed is decoded[name][-1]
    assert fleet.reconciler.fleet.wait(60)
    assert eventually(lambda: all("llama3.2:1b" in decoded[name][-1] for name in LABELS))
