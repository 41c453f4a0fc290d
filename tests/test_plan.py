"""The plan on its own: a pure function, every rule checked without Git or Ollama."""

from __future__ import annotations

from ollama_gitops.reconciler.models.desired import DesiredModel, DesiredState, ModelKey, Problem
from ollama_gitops.reconciler.models.modelfile import ModelFields
from ollama_gitops.reconciler.plan import (Delete, Forget, InstalledModel, MarkReady, Pull, RecordError,
                                           Skip, applied_spec, plan)
from ollama_gitops.reconciler.state import FAILED, PULLING, READY, ModelStatus, ServerRecord

NOW = 1_000_000.0


def model(name: str, tag: str = "1b", namespace: str = "default", **fields: object) -> DesiredModel:
    spec = ModelFields(name=name, tag=tag, **fields)  # type: ignore[arg-type]
    key = ModelKey(namespace, f"{name}-{tag}")
    return DesiredModel(key, spec, f"models/{namespace}/{key.name}.yaml", blob=f"blob-{name}-{tag}-{sorted(fields.items())}")


def desired(*models: DesiredModel, unreadable: tuple[ModelKey, ...] = (), problems: tuple[Problem, ...] = ()) -> DesiredState:
    return DesiredState("c0ffee" * 6 + "abcd", {m.key: m for m in models}, problems, frozenset(unreadable))


def installed(reference: str, size: int = 100, digest: str = "d" * 64) -> InstalledModel:
    return InstalledModel(reference, size, digest, 1_767_225_600)  # 2026-01-01T00:00:00Z


def record(m: DesiredModel, state: str = READY, **status: object) -> ServerRecord:
    status.setdefault("size", 100)
    status.setdefault("digest", "d" * 64)
    return ServerRecord(applied_spec(m), ModelStatus(state=state, **status))  # type: ignore[arg-type]


def kinds(result) -> list[tuple[str, str]]:
    out = []
    for action in result.actions:
        keys = getattr(action, "keys", None) or (action.key,)
        out.append((type(action).__name__, ",".join(k.name for k in keys)))
    return out


def test_new_model_not_in_ollama_is_pulled() -> None:
    llama = model("llama3.2")
    result = plan(desired(llama), {}, {}, now=NOW)
    assert result.actions == (Pull("llama3.2:1b", (llama.key,), "new model, not in Ollama"),)
    assert result.specs[llama.key].reference == "llama3.2:1b"


def test_model_already_in_ollama_is_marked_ready_without_a_pull() -> None:
    llama = model("llama3.2")
    result = plan(desired(llama), {"llama3.2:1b": installed("llama3.2:1b")}, {}, now=NOW)
    assert kinds(result) == [("MarkReady", "llama3.2-1b")]
    assert result.actions[0].owned is False


def test_ready_model_with_matching_status_needs_nothing() -> None:
    llama = model("llama3.2")
    result = plan(desired(llama), {"llama3.2:1b": installed("llama3.2:1b")}, {llama.key: record(llama)}, now=NOW)
    assert result.actions == () and not result.changes_anything


def test_reference_matching_is_case_insensitive_and_defaults_to_latest() -> None:
    upper = model("Llama3", tag="latest")
    result = plan(desired(upper), {"llama3:latest": installed("llama3:latest")}, {}, now=NOW)
    assert kinds(result) == [("MarkReady", "Llama3-latest")]


def test_ready_model_missing_from_ollama_is_drift() -> None:
    llama = model("llama3.2")
    result = plan(desired(llama), {}, {llama.key: record(llama)}, now=NOW)
    assert result.actions == (Pull("llama3.2:1b", (llama.key,), "drift: missing from Ollama"),)


def test_refresh_bump_repulls_once() -> None:
    old = model("llama3.2", refresh_requested_at="2026-01-01T00:00:00Z")
    bumped = model("llama3.2", refresh_requested_at="2026-02-01T00:00:00Z")
    observed = {"llama3.2:1b": installed("llama3.2:1b")}
    rec = record(old, refresh_handled="2026-01-01T00:00:00Z")
    result = plan(desired(bumped), observed, {old.key: rec}, now=NOW)
    assert result.actions == (Pull("llama3.2:1b", (bumped.key,), "refresh requested at 2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z"),)
    done = record(bumped, refresh_handled="2026-02-01T00:00:00Z")
    assert plan(desired(bumped), observed, {bumped.key: done}, now=NOW).actions == ()


def test_refresh_value_in_a_new_file_does_not_repull() -> None:
    fresh = model("llama3.2", refresh_requested_at="2026-01-01T00:00:00Z")
    result = plan(desired(fresh), {"llama3.2:1b": installed("llama3.2:1b")}, {}, now=NOW)
    assert kinds(result) == [("MarkReady", "llama3.2-1b")]


def test_failed_pull_waits_for_its_backoff() -> None:
    llama = model("llama3.2")
    failed = record(llama, FAILED, error="boom", failures=2, next_retry_at=NOW + 30)
    assert kinds(plan(desired(llama), {}, {llama.key: failed}, now=NOW)) == [("Skip", "llama3.2-1b")]
    assert kinds(plan(desired(llama), {}, {llama.key: failed}, now=NOW + 31)) == [("Pull", "llama3.2-1b")]


def test_pull_in_flight_is_not_started_again() -> None:
    llama = model("llama3.2")
    result = plan(desired(llama), {}, {llama.key: record(llama, PULLING)}, in_flight={"llama3.2:1b"}, now=NOW)
    assert result.actions == (Skip(llama.key, "pull in progress"),)


def test_ollama_unreachable_changes_nothing() -> None:
    llama, gemma = model("llama3.2"), model("gemma3")
    records = {llama.key: record(llama, owned=True), gemma.key: record(gemma, owned=True)}
    result = plan(desired(llama), None, records, now=NOW)
    assert kinds(result) == [("Skip", "llama3.2-1b")]


def test_removed_model_is_deleted_only_when_owned() -> None:
    llama, gemma = model("llama3.2"), model("gemma3")
    observed = {"llama3.2:1b": installed("llama3.2:1b"), "gemma3:1b": installed("gemma3:1b")}
    keep = model("phi3", "mini")
    records = {llama.key: record(llama, owned=True), gemma.key: record(gemma, owned=False), keep.key: record(keep)}
    result = plan(desired(keep), observed | {"phi3:mini": installed("phi3:mini")}, records, now=NOW)
    assert Delete("llama3.2:1b", (llama.key,), "file removed from Git") in result.actions
    assert Forget(gemma.key, "gemma3:1b", "file removed; not pulled by ollama-gitops, weights kept") in result.actions


def test_prune_false_and_suspend_keep_the_weights() -> None:
    kept = model("llama3.2", prune=False)
    paused = model("gemma3", suspend=True)
    keep = model("phi3", "mini")
    observed = {r: installed(r) for r in ("llama3.2:1b", "gemma3:1b", "phi3:mini")}
    records = {kept.key: record(kept, owned=True), paused.key: record(paused, owned=True), keep.key: record(keep)}
    result = plan(desired(keep), observed, records, now=NOW)
    assert not result.of(Delete)
    assert {a.reason for a in result.of(Forget)} == {
        "file removed; prune: false keeps the weights", "file removed while suspended; weights kept"}


def test_removed_model_still_wanted_elsewhere_is_not_deleted() -> None:
    team_a, team_b = model("llama3.2", namespace="team-a"), model("llama3.2", namespace="team-b")
    records = {team_a.key: record(team_a, owned=True), team_b.key: record(team_b, owned=True)}
    result = plan(desired(team_a), {"llama3.2:1b": installed("llama3.2:1b")}, records, now=NOW)
    assert [type(a).__name__ for a in result.actions] == ["Forget"]


def test_suspended_model_is_left_alone() -> None:
    paused = model("llama3.2", suspend=True)
    result = plan(desired(paused), {}, {}, now=NOW)
    assert result.actions == (Skip(paused.key, "suspended"),)


def test_broken_file_keeps_the_last_good_version_and_shows_the_error() -> None:
    llama = model("llama3.2")
    problem = Problem(llama.path, 3, "YAML syntax error: oops")
    state = desired(unreadable=(llama.key,), problems=(problem,))
    result = plan(state, {"llama3.2:1b": installed("llama3.2:1b")}, {llama.key: record(llama, owned=True)}, now=NOW)
    assert result.actions == (RecordError(llama.key, "model file is invalid, keeping the last good version: YAML syntax error: oops"),)
    assert result.specs[llama.key] == applied_spec(llama)
    assert result.refused is None


def test_a_broken_files_model_found_changed_in_ollama_keeps_its_files_error() -> None:
    """A listing that gives a broken file's model another digest or size (a resync recording the
    digest a pull's stream did not give, say) records what Ollama lists and keeps the file's error:
    marking it Ready must not say the file is fine (it said so before this test)."""
    llama = model("llama3.2")
    problem = Problem(llama.path, 3, "YAML syntax error: oops")
    message = "model file is invalid, keeping the last good version: YAML syntax error: oops"
    state = desired(unreadable=(llama.key,), problems=(problem,))
    listed = {"llama3.2:1b": installed("llama3.2:1b")}
    unknown_digest = record(llama, owned=True, error=message, digest=None)
    result = plan(state, listed, {llama.key: unknown_digest}, now=NOW)
    assert result.actions == (MarkReady(llama.key, listed["llama3.2:1b"], "its digest, from the listing", True, message),)
    other_size = record(llama, owned=True, size=5)
    result = plan(state, listed, {llama.key: other_size}, now=NOW)
    assert [(type(a), getattr(a, "error", None)) for a in result.actions] == [(RecordError, None), (MarkReady, message)]


def test_pruning_everything_is_refused_without_allow_empty() -> None:
    llama = model("llama3.2")
    records = {llama.key: record(llama, owned=True)}
    observed = {"llama3.2:1b": installed("llama3.2:1b")}
    refused = plan(desired(), observed, records, now=NOW)
    assert refused.refused and "would remove all 1 models" in refused.refused and not refused.of(Delete)
    allowed = plan(desired(), observed, records, now=NOW, allow_empty=True)
    assert allowed.refused is None and allowed.of(Delete)


def test_same_reference_in_two_namespaces_is_one_pull() -> None:
    team_a, team_b = model("llama3.2", namespace="team-a"), model("llama3.2", namespace="team-b")
    result = plan(desired(team_a, team_b), {}, {}, now=NOW)
    assert result.actions == (Pull("llama3.2:1b", (team_a.key, team_b.key), "new model, not in Ollama"),)


def test_ownership_passes_to_a_new_file_for_an_owned_model() -> None:
    team_a, team_b = model("llama3.2", namespace="team-a"), model("llama3.2", namespace="team-b")
    result = plan(desired(team_a, team_b), {"llama3.2:1b": installed("llama3.2:1b")},
                  {team_a.key: record(team_a, owned=True)}, now=NOW)
    assert result.actions == (MarkReady(team_b.key, installed("llama3.2:1b"), "already in Ollama", True),)


def test_scoped_plan_only_touches_the_scope_and_respects_unchanged_models() -> None:
    llama, gemma = model("llama3.2"), model("gemma3")
    llama_b = model("llama3.2", namespace="team-b")
    records = {llama.key: record(llama, owned=True), llama_b.key: record(llama_b, owned=True), gemma.key: record(gemma)}
    # team-b's file is removed; default's llama3.2 is out of scope but still wants the model
    result = plan(desired(llama, gemma), {}, records, scope={llama_b.key}, now=NOW)
    assert [type(a).__name__ for a in result.actions] == ["Forget"]
    assert set(result.specs) == set()


def test_file_removed_while_its_pull_runs_waits() -> None:
    llama, keep = model("llama3.2"), model("phi3", "mini")
    records = {llama.key: record(llama, PULLING, owned=True), keep.key: record(keep)}
    result = plan(desired(keep), {"phi3:mini": installed("phi3:mini")}, records, in_flight={"llama3.2:1b"}, now=NOW)
    assert result.actions == (Skip(llama.key, "file removed; waiting for the pull in progress to end"),)


def test_a_model_is_pulled_as_its_file_spells_it_and_deleted_as_ollama_lists_it() -> None:
    hf = model("hf.co/Org/Model-GGUF", "Q4_K_M")
    result = plan(desired(hf), {}, {}, now=NOW)
    assert result.actions == (Pull("hf.co/Org/Model-GGUF:Q4_K_M", (hf.key,), "new model, not in Ollama"),)
    library = model("registry.ollama.ai/library/llama3.2")
    observed = {"llama3.2:1b": installed("llama3.2:1b")}
    result = plan(desired(hf), observed, {library.key: record(library, owned=True)}, scope={library.key}, now=NOW)
    assert result.actions == (Delete("llama3.2:1b", (library.key,), "file removed from Git"),)


def test_an_unreadable_namespace_keeps_every_model_of_it_and_the_guard_is_not_fooled() -> None:
    llama, gemma = model("llama3.2"), model("gemma3")
    other = model("phi3", "mini", namespace="team-a")
    records = {m.key: record(m, owned=True) for m in (llama, gemma, other)}
    observed = {r: installed(r) for r in ("llama3.2:1b", "gemma3:1b", "phi3:mini")}
    problem = Problem("models/default", None, "namespace folders must be folders, not a Git submodule")
    state = DesiredState("c0ffee" * 6 + "abcd", {other.key: other}, (problem,), unreadable_namespaces=frozenset({"default"}))
    for scope in (None, {llama.key, gemma.key}):
        result = plan(state, observed, records, scope=scope, now=NOW)
        assert not result.of(Delete) and not result.of(Forget) and result.refused is None
        assert result.specs[llama.key] == applied_spec(llama) and result.specs[gemma.key] == applied_spec(gemma)
        message = "models/default: namespace folders must be folders, not a Git submodule"
        assert set(result.of(RecordError)) == {RecordError(llama.key, message), RecordError(gemma.key, message)}
    # `models/` itself unreadable: nothing at all is removed, and nothing is refused either
    everything = DesiredState("c0ffee" * 6 + "abcd", {}, (Problem("models", None, "models is a symbolic link"),), all_unreadable=True)
    result = plan(everything, observed, records, now=NOW)
    assert not result.of(Delete) and not result.of(Forget) and result.refused is None and set(result.specs) == set(records)


def test_summary_counts_pulls_and_deletes_apart_from_models_found_in_ollama() -> None:
    llama, gemma, phi = model("llama3.2"), model("gemma3"), model("phi3", tag="mini")
    found = plan(desired(llama, gemma), {"llama3.2:1b": installed("llama3.2:1b"), "gemma3:1b": installed("gemma3:1b")},
                 {}, now=NOW)
    assert found.summary() == "0 pulls, 0 deletes, 2 already in Ollama"
    mixed = plan(desired(llama, phi), {"gemma3:1b": installed("gemma3:1b")},
                 {gemma.key: record(gemma, owned=True)}, now=NOW)
    assert mixed.summary() == "2 pulls, 1 delete, 0 already in Ollama"


def test_a_suspended_model_is_left_alone_and_its_stale_error_cleared_but_not_a_broken_files() -> None:
    from ollama_gitops.reconciler.plan import Suspend

    failed, quiet = model("llama3.2", suspend=True), model("gemma3", suspend=True)
    records = {failed.key: record(failed, FAILED, error="pull model manifest: file does not exist", failures=2,
                                  next_retry_at=NOW + 60),
               quiet.key: record(quiet)}
    result = plan(desired(failed, quiet), {}, records, now=NOW)
    assert result.actions == (Skip(quiet.key, "suspended"), Suspend(failed.key))
    broken = plan(desired(quiet, unreadable=(failed.key,)), {}, records, now=NOW)
    assert not broken.of(Suspend)  # a broken file's error is current: it stays


def test_a_spec_for_a_model_ollama_lists_holds_the_listings_own_string_for_its_reference() -> None:
    """The records and the kept listing hold one string per model between them, and none interned."""
    llama = model("llama3.2", "1b")
    listed = {"llama3.2:1b": installed("".join(["llama3.2", ":1b"]))}
    assert applied_spec(llama, listed).reference is listed["llama3.2:1b"].reference
    result = plan(desired(llama), listed, {}, now=NOW)
    assert result.specs[llama.key].reference is listed["llama3.2:1b"].reference
    assert applied_spec(llama).reference == "llama3.2:1b" and applied_spec(llama, {}).reference == "llama3.2:1b"
