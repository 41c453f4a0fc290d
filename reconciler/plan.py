"""The plan: a pure function from (desired, observed, recorded) state to the actions that close the gap.

No I/O here. Everything the decision depends on is an argument, so every rule of the reconciler is
unit-testable on its own, and `--dry-run` prints exactly what a real cycle would do.

Safety rules, in order of precedence:
- never delete what cannot be seen: a file that is broken keeps its model's last good version; when
  Ollama could not be observed nothing is pulled or deleted;
- only models ollama-gitops pulled itself are ever deleted, and never one whose file said
  `prune: false`; `suspend: true` leaves a model alone entirely;
- a commit that would remove every managed model is refused unless `allow_empty`.
"""

from __future__ import annotations


from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from .models.desired import DesiredModel, DesiredState, ModelKey
from .models.naming import normalize_reference
from .state import FAILED, READY, AppliedSpec, ServerRecord


@dataclass(frozen=True, slots=True)  # slots: one per model Ollama lists, kept between cycles
class InstalledModel:
    """A model as Ollama lists it."""

    reference: str
    size: int
    digest: str
    # When Ollama says it was modified (`modified_at`), in whole seconds since the epoch: an int,
    # decided when the listing is decoded, rather than Ollama's string (30 to 35 characters) per model.
    # None when Ollama did not say or said it unreadably.
    modified: int | None = None


@dataclass(frozen=True, slots=True)
class Pull:
    """Pull `reference` into Ollama, for every model key that asks for it."""

    reference: str
    keys: tuple[ModelKey, ...]
    reason: str
    refresh: str | None = None  # the refreshRequestedAt value this pull satisfies


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `reference` from Ollama, then forget the keys (files removed from Git)."""

    reference: str
    keys: tuple[ModelKey, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Stop managing a removed model without touching Ollama (its record, and so its ownership, goes)."""

    key: ModelKey
    reference: str
    reason: str


@dataclass(frozen=True, slots=True)  # slots, as every action: a cold start plans one per model
class MarkReady:
    """The model is in Ollama as wanted: record it Ready with what Ollama reports.

    `owned` passes ollama-gitops's ownership of the weights on to a new file for the same model.
    `error` is what the model shows afterwards: None, or a broken file's error (its model stays at
    its last good version, Ready, and keeps saying why its file is not read).
    """

    key: ModelKey
    installed: InstalledModel
    reason: str
    owned: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordError:
    """Show an error on a model without changing what is pulled (e.g. its file is broken)."""

    key: ModelKey
    message: str


@dataclass(frozen=True, slots=True)
class Suspend:
    """A suspended model is left alone, and shows nothing stale: its error and pending retry from
    before are cleared, and a Failed model becomes Pending (nothing is tried, so nothing fails)."""

    key: ModelKey
    reason: str = "suspended; the error from before is cleared"


@dataclass(frozen=True, slots=True)
class Skip:
    """Leave a model as it is, and say why (for dry runs and logs)."""

    key: ModelKey
    reason: str


Action = Pull | Delete | Forget | MarkReady | RecordError | Suspend | Skip


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    specs: Mapping[ModelKey, AppliedSpec]  # what each managed model should now be recorded as
    refused: str | None = None  # why the plan deletes nothing although files were removed

    def of(self, kind: type) -> list:
        """The actions of one kind, in plan order."""
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def changes_anything(self) -> bool:
        return any(not isinstance(a, Skip) for a in self.actions)

    def summary(self) -> str:
        """What the plan changes, counted by kind: `1 pull, 0 deletes, 2 already in Ollama`.

        A model found in Ollama changes ollama-gitops's records, not Ollama: it is counted apart
        from pulls and deletes, never as a change to the server."""
        def count(n: int, noun: str, plural: str) -> str:
            return f"{n} {noun if n == 1 else plural}"

        parts = [count(len(self.of(Pull)), "pull", "pulls"), count(len(self.of(Delete)), "delete", "deletes"),
                 f"{len(self.of(MarkReady))} already in Ollama"]
        if forgotten := len(self.of(Forget)):
            parts.append(f"{forgotten} forgotten")
        if errors := len(self.of(RecordError)):
            parts.append(count(errors, "file error", "file errors"))
        return ", ".join(parts)


def merge_plans(plans: Sequence[Plan]) -> Plan:
    """Several servers' plans as one, for what is said of them together (`summary()`); one plan is
    itself. The actions are in the order given; `refused` joins each one's reason."""
    if len(plans) == 1:
        return plans[0]
    specs: dict[ModelKey, AppliedSpec] = {}
    for each in plans:
        specs.update(each.specs)
    refused = "; ".join(each.refused for each in plans if each.refused) or None
    return Plan(tuple(action for each in plans for action in each.actions), specs, refused)


def applied_spec(model: DesiredModel, listed: Mapping[str, InstalledModel] | None = None,
                 recorded: AppliedSpec | None = None) -> AppliedSpec:
    """What the reconciler records of a desired model. Its reference is the very string of Ollama's
    listing `listed` (by normalised reference) when that names the model alike: the records and the
    kept listing of a hundred thousand models then hold one string each, with nothing interned (the
    interpreter's table of interned strings would grow by every one of them). The spec `recorded`
    itself when it is that, made of the same strings (a full plan over recorded models then makes
    no spec of each)."""
    fields = model.fields
    reference = fields.reference
    installed = listed.get(normalize_reference(reference)) if listed else None
    if installed is not None and installed.reference == reference:
        reference = installed.reference
    if (recorded is not None and recorded.reference is reference and recorded.path is model.path
            and recorded.prune == fields.prune and recorded.suspend == fields.suspend
            and recorded.refresh_requested_at == fields.refresh_requested_at):
        return recorded
    return AppliedSpec(
        reference=reference,
        path=model.path,
        prune=fields.prune,
        suspend=fields.suspend,
        refresh_requested_at=fields.refresh_requested_at,
    )


def plan(
    desired: DesiredState,
    observed: Mapping[str, InstalledModel] | None,
    records: Mapping[ModelKey, ServerRecord],
    *,
    scope: Set[ModelKey] | None = None,
    in_flight: Set[str] = frozenset(),
    now: float,
    allow_empty: bool = False,
    displaced: Set[ModelKey] = frozenset(),
) -> Plan:
    """Decide what to do about the models in `scope` (every model when None).

    One server's plan: `records` are the models' records as that server sees them (`on_server`).
    `observed` is keyed by normalised reference and is None when Ollama could not be asked: then
    nothing is pulled or deleted. `records` must hold every recorded key in scope and every recorded
    key that shares a reference with one (see `StateStore.related`); a recorded key outside scope is
    taken as unchanged. `in_flight` holds the references being pulled right now. `displaced` are the
    models whose files are still there but that are no longer placed on this server: removed here
    like a removed file, with reasons that say so.
    """
    if scope is None:
        keys = dict.fromkeys(desired.models)  # in key order, as a load gives them
        keys.update(dict.fromkeys(desired.unreadable))
        keys.update(dict.fromkeys(records))
    else:
        keys = dict.fromkeys(scope)
    # Sorted once: a full plan's keys come nearly in order (a linear sort), and everything made
    # from them below is then in order too, so its sorts cost little more than a look at each.
    ordered = sorted(keys)
    specs: dict[ModelKey, AppliedSpec] = {}
    kept: set[ModelKey] = set()  # models whose file (or namespace folder, or models/) cannot be read
    for key in ordered:
        model = desired.models.get(key)
        if model is not None:
            recorded = records.get(key)
            specs[key] = applied_spec(model, observed, recorded.spec if recorded is not None else None)
        elif desired.is_unreadable(key):
            kept.add(key)
            if key in records:
                specs[key] = records[key].spec  # keep the last good version of a broken file's model
    # What each kept model shows: why what stands for it cannot be read.
    kept_errors = {key: desired.kept_reason(key, records[key].spec.path) for key in kept if key in records}
    actions: list[Action] = [RecordError(key, message) for key, message in sorted(kept_errors.items())
                             if records[key].status.error != message]

    removed = [key for key in ordered if key in records and key not in specs]
    refused = None
    if (removed and not allow_empty and not desired.models
            and not any(desired.is_unreadable(k) for k in records)):
        refused = (
            f"commit {(desired.commit or '')[:12]} would remove all {len(removed)} models; "
            "refusing to prune to zero without --allow-empty"
        )
        specs.update({key: records[key].spec for key in removed})
        removed = []

    # Per normalised reference, the key that wants it or, wanted by several, a list of them in key
    # order (a list per model, or a pair of each in a sorted list, would cost a full plan more than
    # its specs: a plan is made beside every record, at a restart).
    wanted_by_reference: dict[str, ModelKey | list[ModelKey]] = {}
    for key in sorted(specs):
        reference = normalize_reference(specs[key].reference)
        found = wanted_by_reference.setdefault(reference, key)
        if found is not key:
            if isinstance(found, list):
                found.append(key)
            else:
                wanted_by_reference[reference] = [found, key]
    # Recorded models outside the scope are unchanged: they still want what they wanted.
    still_wanted = {normalize_reference(r.spec.reference) for k, r in records.items() if k not in keys}
    owned = {normalize_reference(r.spec.reference) for r in records.values() if r.status.owned}

    for reference in sorted(wanted_by_reference):
        wanting = wanted_by_reference[reference]
        actions.extend(_plan_reference(reference, wanting if isinstance(wanting, list) else [wanting], specs, records,
                                       observed, in_flight, now, reference in owned, kept_errors))

    if observed is not None:
        wanted = still_wanted | set(wanted_by_reference)
        actions.extend(_plan_removals(removed, records, owned, wanted, observed, in_flight, displaced))
    return Plan(tuple(actions), specs, refused)


def _plan_reference(
    reference: str,
    keys: list[ModelKey],
    specs: Mapping[ModelKey, AppliedSpec],
    records: Mapping[ModelKey, ServerRecord],
    observed: Mapping[str, InstalledModel] | None,
    in_flight: Set[str],
    now: float,
    owned: bool,
    kept_errors: Mapping[ModelKey, str],
) -> list[Action]:
    if len(keys) == 1 and observed is not None and reference not in in_flight:
        # A cold start's every model: one new file for a model Ollama has. The same answer as below,
        # without the lists made for references that several files or records share.
        key = keys[0]
        installed = observed.get(reference)
        if installed is not None and key not in records and not specs[key].suspend:
            return [MarkReady(key, installed, "already in Ollama", owned, kept_errors.get(key))]
    active = [k for k in keys if not specs[k].suspend]
    actions: list[Action] = [_suspended(k, records.get(k), k in kept_errors) for k in keys if specs[k].suspend]
    if not active:
        return actions
    if reference in in_flight:
        return actions + [Skip(k, "pull in progress") for k in active]
    if observed is None:
        return actions + [Skip(k, "Ollama not reachable") for k in active]

    installed = observed.get(reference)
    refresh = _pending_refresh(active, specs, records)
    new_keys = [k for k in active if k not in records]
    if installed is not None and refresh is None:
        for key in active:
            status = records[key].status if key in records else None
            # A broken file's model shows the file's error while it stays Ready: not a reason to act.
            error = kept_errors.get(key)
            stale_error = status is not None and bool(status.error) and error is None
            if (status is None or status.state != READY or stale_error or status.owned != owned
                    or status.size != installed.size):
                actions.append(MarkReady(key, installed, "already in Ollama", owned, error))
            elif (status.digest or "") != installed.digest:
                # A pull records no digest (its stream gives none) and the listing kept since has ""
                # for it, which is the same; a real listing's digest is recorded when one gives it.
                actions.append(MarkReady(key, installed, "its digest, from the listing", owned, error))
        return actions

    retry_at = min((records[k].status.next_retry_at or 0.0) for k in active if k in records) if len(new_keys) < len(active) else 0.0
    if retry_at > now and not new_keys:
        return actions + [Skip(k, f"retrying in {retry_at - now:.0f}s after a failed pull") for k in active]
    if refresh is not None and installed is not None:
        reason = f"refresh requested at {refresh}"
    elif new_keys:
        reason = "new model, not in Ollama"
    elif any(records[k].status.state == READY for k in active):
        reason = "drift: missing from Ollama"
    else:
        reason = "not in Ollama"
    # Pulled as the file spells it (Ollama keeps that spelling), matched by the normalised key.
    return actions + [Pull(specs[active[0]].reference, tuple(active), reason, refresh)]


def _suspended(key: ModelKey, record: ServerRecord | None, broken: bool) -> Action:
    status = record.status if record is not None else None
    # A broken file's error is current, not stale: it stays.
    stale = status is not None and not broken and (
        bool(status.error) or status.state == FAILED or status.next_retry_at is not None)
    return Suspend(key) if stale else Skip(key, "suspended")


def _pending_refresh(keys: list[ModelKey], specs: Mapping[ModelKey, AppliedSpec], records: Mapping[ModelKey, ServerRecord]) -> str | None:
    """The refresh value still to act on, if any key's file bumped it since the last pull."""
    for key in keys:
        wanted = specs[key].refresh_requested_at
        record = records.get(key)
        # A model seen for the first time is pulled (or found) as it is: its refresh value is history.
        if wanted is not None and record is not None and not _satisfied(wanted, record.status.refresh_handled):
            return wanted
    return None


def _satisfied(wanted: str, handled: str | None) -> bool:
    """Has a pull answered every part of the refresh request? (Kubernetes mode joins the file's
    request and the seed's annotation with `|`; a pull for both answers either alone.)"""
    return handled is not None and set(wanted.split("|")) <= set(handled.split("|"))


def _plan_removals(
    removed: list[ModelKey],
    records: Mapping[ModelKey, ServerRecord],
    owned: Set[str],
    wanted: Set[str],
    observed: Mapping[str, InstalledModel],
    in_flight: Set[str],
    displaced: Set[ModelKey],
) -> list[Action]:
    actions: list[Action] = []
    by_reference: dict[str, list[ModelKey]] = defaultdict(list)
    for key in removed:
        by_reference[normalize_reference(records[key].spec.reference)].append(key)
    for reference, keys in sorted(by_reference.items()):
        specs = [records[k].spec for k in keys]
        gone = "no longer placed on this server" if all(k in displaced for k in keys) else "file removed"

        def forget(reason: str) -> list[Action]:
            return [Forget(k, records[k].spec.reference, f"{gone}; {reason}") for k in keys]

        if reference in wanted:
            actions.extend(forget("the model is still wanted by another file"))
        elif reference in in_flight:
            # Deciding now would race the download; prune once it has ended.
            actions.extend(Skip(k, f"{gone}; waiting for the pull in progress to end") for k in keys)
        elif any(s.suspend for s in specs):
            actions.extend(Forget(k, records[k].spec.reference, f"{gone} while suspended; weights kept") for k in keys)
        elif not all(s.prune for s in specs):
            actions.extend(forget("prune: false keeps the weights"))
        elif reference not in owned:
            actions.extend(forget("not pulled by ollama-gitops, weights kept"))
        elif reference not in observed:
            actions.extend(forget("already gone from Ollama"))
        else:
            reason = gone if gone != "file removed" else "file removed from Git"
            actions.append(Delete(observed[reference].reference, tuple(keys), reason))  # as listed
    return actions

