"""The plan of a fleet on its own (`placement.plan_servers`): pure, every rule per server."""

from __future__ import annotations

from ollama_gitops.reconciler.models.selector import LabelSelector, Requirement
from ollama_gitops.reconciler.placement import ServerView, plan_servers
from ollama_gitops.reconciler.plan import Delete, Forget, Pull, Skip, applied_spec
from ollama_gitops.reconciler.state import READY, ModelRecord, ModelStatus

from test_plan import NOW, desired, installed, kinds, model

A100 = {"gpu": "a100", "zone": "eu"}
L4 = {"gpu": "l4", "zone": "us"}


def view(name: str, labels: dict[str, str], *refs: str, listed: bool = True) -> ServerView:
    return ServerView(name, labels, {r: installed(r) for r in refs} if listed else None)


def on(m, **servers: ModelStatus) -> ModelRecord:
    return ModelRecord(applied_spec(m), dict(servers))


def owned() -> ModelStatus:
    return ModelStatus(READY, size=100, digest="d" * 64, owned=True)


EVERYWHERE = model("llama3.2")
ONLY_A100 = model("big", servers=LabelSelector.of({"gpu": "a100"}))
NOT_US = model("eu", servers=LabelSelector.of(None, Requirement("zone", "NotIn", ("us",))))


def test_each_server_gets_the_models_its_labels_select() -> None:
    plans = plan_servers(desired(EVERYWHERE, ONLY_A100, NOT_US), [view("gpu-1", A100), view("gpu-2", L4)], {}, now=NOW)
    assert sorted(plans) == ["gpu-1", "gpu-2"]
    assert sorted(kinds(plans["gpu-1"])) == [("Pull", "big-1b"), ("Pull", "eu-1b"), ("Pull", "llama3.2-1b")]
    assert kinds(plans["gpu-2"]) == [("Pull", "llama3.2-1b")]
    assert set(plans["gpu-2"].specs) == {EVERYWHERE.key}  # nothing else is recorded there


def test_a_selector_that_matches_no_server_plans_nothing_anywhere() -> None:
    nowhere = model("huge", servers=LabelSelector.of({"gpu": "h100"}))
    plans = plan_servers(desired(EVERYWHERE, nowhere), [view("gpu-1", A100), view("gpu-2", L4)], {}, now=NOW)
    assert all(nowhere.key not in p.specs and kinds(p) == [("Pull", "llama3.2-1b")] for p in plans.values())


def test_a_placement_change_pulls_onto_new_servers_and_deletes_only_what_it_pulled_from_old_ones() -> None:
    # `big` and `eu` were on both servers; now only on the A100 / non-US one
    prune_false = model("kept", servers=LabelSelector.of({"gpu": "a100"}), prune=False)
    records = {ONLY_A100.key: on(ONLY_A100, **{"gpu-2": owned()}),
               NOT_US.key: on(NOT_US, **{"gpu-1": owned(), "gpu-2": ModelStatus(READY, size=100, digest="d" * 64)}),
               prune_false.key: on(prune_false, **{"gpu-2": owned()})}
    servers = [view("gpu-1", A100, "eu:1b"), view("gpu-2", L4, "big:1b", "eu:1b", "kept:1b")]
    plans = plan_servers(desired(EVERYWHERE, ONLY_A100, NOT_US, prune_false), servers, records, now=NOW)
    assert Pull("big:1b", (ONLY_A100.key,), "new model, not in Ollama") in plans["gpu-1"].actions
    assert Delete("big:1b", (ONLY_A100.key,), "no longer placed on this server") in plans["gpu-2"].actions
    assert Forget(NOT_US.key, "eu:1b", "no longer placed on this server; not pulled by ollama-gitops, weights kept") \
        in plans["gpu-2"].actions
    assert Forget(prune_false.key, "kept:1b", "no longer placed on this server; prune: false keeps the weights") \
        in plans["gpu-2"].actions
    assert not plans["gpu-1"].of(Delete) and not plans["gpu-1"].of(Forget)


def test_a_server_that_could_not_be_listed_has_nothing_pulled_or_deleted_on_it() -> None:
    records = {ONLY_A100.key: on(ONLY_A100, **{"gpu-2": owned()})}
    plans = plan_servers(desired(EVERYWHERE, ONLY_A100), [view("gpu-1", A100), view("gpu-2", L4, listed=False)],
                         records, now=NOW)
    assert plans["gpu-2"].actions == (Skip(EVERYWHERE.key, "Ollama not reachable"),)  # no delete of big either
    assert sorted(kinds(plans["gpu-1"])) == [("Pull", "big-1b"), ("Pull", "llama3.2-1b")]


def test_no_server_is_pruned_to_zero_without_allow_empty() -> None:
    records = {ONLY_A100.key: on(ONLY_A100, **{"gpu-1": owned(), "gpu-2": owned()})}
    servers = [view("gpu-1", A100, "big:1b"), view("gpu-2", L4, "big:1b")]
    plans = plan_servers(desired(ONLY_A100), servers, records, now=NOW)
    assert "would remove all 1 models" in (plans["gpu-2"].refused or "") and not plans["gpu-2"].of(Delete)
    assert plans["gpu-1"].refused is None
    plans = plan_servers(desired(ONLY_A100), servers, records, now=NOW, allow_empty=True)
    assert plans["gpu-2"].of(Delete) == [Delete("big:1b", (ONLY_A100.key,), "no longer placed on this server")]


def test_servers_with_the_same_labels_share_one_placement_and_none_is_made_without_selectors() -> None:
    plain = desired(EVERYWHERE)
    assert plain.placed_on(A100) is plain and plain.not_placed_on(A100) == frozenset()
    mixed = desired(EVERYWHERE, ONLY_A100)
    on_a100, on_l4 = mixed.placed_on(A100), mixed.placed_on(L4)
    assert on_a100 is mixed and mixed.placed_on({"zone": "eu", "gpu": "a100"}) is on_a100
    assert mixed.placed_on(dict(L4)) is on_l4  # computed once per label set
    assert list(on_l4.models) == [EVERYWHERE.key] and len(on_l4.models) == 1
    assert ONLY_A100.key not in on_l4.models and on_l4.models.get(ONLY_A100.key) is None
    assert mixed.not_placed_on(L4) == {ONLY_A100.key}
