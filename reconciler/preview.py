"""What applying a commit would do: the plan of a pull request, computed, never carried out.

Given the desired state of a commit (loaded by the loader a cycle uses), the desired state it would
replace (the last applied commit's) and what each server holds, the same pure `plan()` a cycle runs
decides, per server, over the models whose files differ. Nothing here pulls, deletes or writes: the
result is a `PlanPreview`, which the API answers as JSON (`GET /api/v1/plan`) and `ollama-gitops
plan` prints. Sizes come from a `Sizes` (the registry and the servers' blobs, see
`ollama/downloads.py`), unknown when it cannot tell.

The plan is per server through the fleet's `placement.plan_servers`: each server over the models
placed on it (its `servers:` selector) and the records' entries for it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .models.desired import MODEL_SUFFIXES, MODELS_DIR, DesiredState, ModelKey, Problem, changed_between
from .models.naming import normalize_reference
from .placement import ServerView, plan_servers
from .plan import Delete, Forget, InstalledModel, MarkReady, Plan, Pull, Skip, Suspend, applied_spec
from .state import READY, ModelRecord, ModelStatus, ServerRecord, on_server

PULL, REFRESH, DELETE, KEEP, MOVE, ADOPT, FORGET, WAIT = (
    "pull", "refresh", "delete", "keep", "move", "adopt", "forget", "wait")
PULLS = (PULL, REFRESH)
OFFLINE_SERVER = "unknown"  # the one server of an offline plan: which servers, and what they hold, is not known


class Sizes(Protocol):
    """What a pull would download, and what the registry has now (see ollama/downloads.py)."""

    def download_bytes(self, server: str, reference: str) -> int | None:
        """The bytes `server` would fetch to pull `reference`; None when unknown."""

    def upstream_digest(self, reference: str) -> str | None:
        """The digest Ollama would record for `reference` pulled now; None when unknown."""


@dataclass(frozen=True)
class PreviewAction:
    action: str  # PULL, REFRESH, DELETE, KEEP, MOVE, ADOPT, FORGET, WAIT
    model: str  # namespace/name
    reference: str  # name:tag, as the file spells it
    server: str
    reason: str
    download_bytes: int | None = None  # pulls and refreshes, when known
    models: tuple[str, ...] = ()  # every model one pull or delete is for, when more than one
    moved_from: str | None = None  # a move: the model's earlier namespace/name

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action, "model": self.model, "reference": self.reference,
                                "server": self.server, "reason": self.reason}
        if self.download_bytes is not None:
            data["downloadBytes"] = self.download_bytes
        if self.models:
            data["models"] = list(self.models)
        if self.moved_from is not None:
            data["from"] = self.moved_from
        return data


@dataclass(frozen=True)
class ServerSummary:
    name: str
    url: str | None
    observed: str  # "listing": what the server holds now; "records": as the reconciler last saw it; "none"
    pulls: int = 0
    deletes: int = 0
    download_bytes: int = 0  # of the pulls whose size is known
    unknown_sizes: int = 0  # pulls whose size is not known
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "observed": self.observed, "pulls": self.pulls,
                "deletes": self.deletes, "downloadBytes": self.download_bytes, "unknownSizes": self.unknown_sizes,
                "note": self.note}


@dataclass(frozen=True)
class Information:
    """Worth knowing, not an action (a tag that moved upstream)."""

    model: str
    reference: str
    server: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference, "server": self.server, "message": self.message}


@dataclass(frozen=True)
class PlanPreview:
    ref: str
    commit: str
    base: str | None  # the commit the plan is against (the last applied one); None: nothing applied yet
    actions: tuple[PreviewAction, ...]
    problems: tuple[Problem, ...]
    servers: tuple[ServerSummary, ...]
    information: tuple[Information, ...] = ()
    offline: bool = False
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The API's answer (`GET /api/v1/plan`), which `ollama-gitops plan` renders."""
        return {"ref": self.ref, "commit": self.commit, "base": self.base,
                "actions": [a.to_json() for a in self.actions],
                "problems": [{"path": p.path, "line": p.line, "message": p.message} for p in self.problems],
                "servers": [s.to_json() for s in self.servers],
                "information": [i.to_json() for i in self.information],
                "offline": self.offline, "notes": list(self.notes)}


class RecordSource(Protocol):
    def records(self, keys: Collection[ModelKey] | None = None) -> dict[ModelKey, ModelRecord]: ...


@dataclass(frozen=True)
class ServerInput:
    """One server as the preview sees it: its view for the plan, and where its view came from."""

    view: ServerView
    url: str | None
    observed_from: str  # "listing", "records" or "none"
    note: str | None = None


def related_records(source: RecordSource, scope: Collection[ModelKey] | None,
                    references: Collection[str]) -> dict[ModelKey, ModelRecord]:
    """The records a plan of `scope` needs: those of `scope` and of every key sharing a reference
    with them (`StateStore.related` when the source has it, else found by a pass over all)."""
    if scope is None:
        return source.records()
    related: Callable[..., set[ModelKey]] | None = getattr(source, "related", None)
    if related is not None:
        return source.records(related(scope, references))
    every = source.records()
    wanted = {normalize_reference(r) for r in references}
    wanted.update(normalize_reference(every[k].spec.reference) for k in scope if k in every)
    return {k: r for k, r in every.items() if k in scope or normalize_reference(r.spec.reference) in wanted}


def recorded_observations(records: Mapping[ModelKey, ModelRecord], server: str) -> dict[str, InstalledModel]:
    """What `server` holds as the records say (the models recorded Ready there): for when it cannot
    be listed now, or by a process that does not talk to it."""
    observed: dict[str, InstalledModel] = {}
    for record in records_on(records, server).values():
        status = record.status
        if status.state == READY:
            observed[normalize_reference(record.spec.reference)] = InstalledModel(
                record.spec.reference, status.size or 0, status.digest or "")
    return observed


def records_on(records: Mapping[ModelKey, ModelRecord], server: str) -> Mapping[ModelKey, ServerRecord]:
    """The records as one server sees them: the models planned there."""
    return on_server(records, server)


def scope_of(desired: DesiredState, base: DesiredState | None) -> set[ModelKey] | None:
    """The models a preview plans: those whose files differ from the base (every model with no base)."""
    return None if base is None else changed_between(base, desired)


def scope_from_paths(paths: Iterable[str], desired: DesiredState, base: DesiredState) -> set[ModelKey]:
    """The models a preview plans, from the paths Git says differ between the base and the commit:
    a model file's path names its model; a namespace folder (or `models/`) changed in kind stands
    for every model it held or holds. Costs what the change costs, not what the repository does."""
    keys: set[ModelKey] = set()
    whole: set[str | None] = set()  # namespaces (None: all of models/) replaced as a whole
    for path in paths:
        parts = path.split("/")
        if parts[0] != MODELS_DIR:
            continue
        if len(parts) == 3 and parts[2].endswith(MODEL_SUFFIXES):
            keys.add(ModelKey(parts[1], parts[2].rpartition(".")[0]))
        elif len(parts) <= 2:
            whole.add(parts[1] if len(parts) == 2 else None)
    if whole:
        for state in (base, desired):
            for key in (*state.models, *state.unreadable):
                if None in whole or key.namespace in whole:
                    keys.add(key)
    return keys


def references_of(desired: DesiredState, scope: Collection[ModelKey] | None) -> list[str]:
    if scope is None:
        return []
    return [desired.models[k].reference for k in scope if k in desired.models]


def preview(ref: str, desired: DesiredState, base: DesiredState | None, servers: Sequence[ServerInput],
            records: Mapping[ModelKey, ModelRecord], *, scope: Collection[ModelKey] | None, now: float,
            allow_empty: bool, sizes: Sizes | None = None, offline: bool = False,
            notes: Sequence[str] = ()) -> PlanPreview:
    """The preview of applying `desired` (the commit `ref` names) over `base`, on `servers`.

    `records` must hold those `related_records` gives for `scope` (the models whose files differ,
    `scope_of`). Unchanged models are not actions; deletions always are, and so are the models kept
    (prune: false, suspend, a broken file, a refused prune to zero)."""
    plans = plan_servers(desired, [s.view for s in servers], records, scope=scope, now=now, allow_empty=allow_empty)
    actions: list[PreviewAction] = []
    information: list[Information] = []
    summaries: list[ServerSummary] = []
    for server in servers:
        found = _server_actions(plans[server.view.name], server.view, desired,
                                records_on(records, server.view.name), scope, sizes)
        actions.extend(found)
        if sizes is not None:
            information.extend(_moved_upstream(found, server.view, sizes))
        pulls = [a for a in found if a.action in PULLS]
        summaries.append(ServerSummary(
            server.view.name, server.url, server.observed_from, len(pulls),
            sum(1 for a in found if a.action == DELETE),
            sum(a.download_bytes for a in pulls if a.download_bytes is not None),
            sum(1 for a in pulls if a.download_bytes is None), server.note))
    actions.sort(key=lambda a: (a.server, a.model, a.action))
    return PlanPreview(ref, desired.commit or "", base.commit if base is not None else None, tuple(actions),
                       desired.problems, tuple(summaries), tuple(information), offline, tuple(notes))


def _server_actions(the_plan: Plan, server: ServerView, desired: DesiredState, records: Mapping[ModelKey, ServerRecord],
                    scope: Collection[ModelKey] | None, sizes: Sizes | None) -> list[PreviewAction]:
    name = server.name
    observed = server.observed or {}
    wanted = {normalize_reference(spec.reference) for spec in the_plan.specs.values()}
    actions: list[PreviewAction] = []
    adopted: dict[str, tuple[ModelKey, PreviewAction]] = {}  # new files whose model is already there
    forgotten: dict[str, list[Forget]] = {}  # removed files whose model another file still wants
    for action in the_plan.actions:
        if isinstance(action, Pull):
            on_server = normalize_reference(action.reference) in observed
            size = sizes.download_bytes(name, action.reference) if sizes is not None else None
            actions.append(PreviewAction(REFRESH if on_server else PULL, str(action.keys[0]), action.reference, name,
                                         action.reason, size, _all(action.keys)))
        elif isinstance(action, Delete):
            actions.append(PreviewAction(DELETE, str(action.keys[0]), action.reference, name, action.reason,
                                         models=_all(action.keys)))
        elif isinstance(action, Forget):
            reference = normalize_reference(action.reference)
            if reference in wanted:
                forgotten.setdefault(reference, []).append(action)
            else:
                kind = KEEP if reference in observed else FORGET
                actions.append(PreviewAction(kind, str(action.key), action.reference, name, action.reason))
        elif isinstance(action, MarkReady) and action.key not in records:
            found = PreviewAction(ADOPT, str(action.key), desired.models[action.key].reference, name,
                                  "already on the server: nothing to pull")
            adopted[normalize_reference(found.reference)] = (action.key, found)
            actions.append(found)
        elif isinstance(action, (Suspend, Skip)):
            model = desired.models.get(action.key)
            if model is not None and model.fields.suspend:
                actions.append(PreviewAction(KEEP, str(action.key), model.reference, name, "suspend: true leaves it alone"))
            elif model is not None or action.key in records:
                reference = model.reference if model is not None else records[action.key].spec.reference
                actions.append(PreviewAction(WAIT, str(action.key), reference, name, action.reason))
    for reference, gone in forgotten.items():
        for action in gone:
            target = adopted.pop(reference, None)
            if target is None:
                actions.append(PreviewAction(FORGET, str(action.key), action.reference, name, action.reason))
                continue
            key, found = target
            actions.remove(found)
            actions.append(PreviewAction(MOVE, found.model, found.reference, name,
                                         f"file moved from {records[action.key].spec.path} to "
                                         f"{desired.models[key].path}; nothing pulled or deleted",
                                         moved_from=str(action.key)))
    actions.extend(_kept(the_plan, name, desired, records, scope))
    return actions


def _kept(the_plan: Plan, server: str, desired: DesiredState, records: Mapping[ModelKey, ServerRecord],
          scope: Collection[ModelKey] | None) -> list[PreviewAction]:
    """The models kept although their file changed: broken files (at their last good version), and
    every removal of a refused prune to zero."""
    keys = scope if scope is not None else records.keys()
    kept = []
    for key in sorted(keys):
        record = records.get(key)
        if record is None or key in desired.models:
            continue
        if desired.is_unreadable(key):
            kept.append(PreviewAction(KEEP, str(key), record.spec.reference, server,
                                      desired.kept_reason(key, record.spec.path)))
        elif the_plan.refused is not None:
            kept.append(PreviewAction(KEEP, str(key), record.spec.reference, server, the_plan.refused))
    return kept


def _all(keys: tuple[ModelKey, ...]) -> tuple[str, ...]:
    return tuple(map(str, keys)) if len(keys) > 1 else ()


def _moved_upstream(actions: Sequence[PreviewAction], server: ServerView, sizes: Sizes) -> list[Information]:
    """For the models of the plan that the server holds and will go on holding (refreshed, taken on
    by a new file, moved), a tag the registry now has at another digest."""
    notes = []
    observed = server.observed or {}
    for action in actions:
        if action.action not in (REFRESH, ADOPT, MOVE):
            continue
        installed = observed.get(normalize_reference(action.reference))
        upstream = sizes.upstream_digest(action.reference) if installed is not None and installed.digest else None
        if upstream is not None and installed is not None and upstream != installed.digest:
            notes.append(Information(action.model, action.reference, server.name,
                                     f"the tag has moved upstream: the registry has {upstream[:12]}, "
                                     f"the server {installed.digest[:12]}"
                                     + ("; this refresh pulls it" if action.action == REFRESH else
                                        "; change refreshRequestedAt to pull it")))
    return notes


# --------------------------------------------------------------------------- offline

def offline_inputs(base: DesiredState) -> tuple[ServerInput, dict[ModelKey, ModelRecord]]:
    """A server and records made up from the base's files, for a plan with no service to ask: every
    model of the base is taken to be on the server, pulled by ollama-gitops (so a removal shows as
    the delete it would be), with its refresh handled."""
    records = {key: ModelRecord(applied_spec(model), {OFFLINE_SERVER: ModelStatus(
                   READY, owned=True, refresh_handled=model.fields.refresh_requested_at)})
               for key, model in base.models.items()}
    observed = {normalize_reference(m.reference): InstalledModel(m.reference, 0, "") for m in base.models.values()}
    view = ServerView(OFFLINE_SERVER, {}, observed)
    note = ("offline: no service was asked; planned against the base's files, as if every model there "
            "were on the servers and pulled by ollama-gitops; sizes and servers unknown")
    return ServerInput(view, None, "none", note), records


def offline_preview(root: str, base_revision: str, head_revision: str = "HEAD", *, now: float) -> PlanPreview:
    """Compare the model files of `head_revision` with those of `base_revision` in the checkout at
    `root` (for a pull request from a fork, with no service to ask), both read from Git as a cycle
    reads them. Raises ValueError when either cannot be read."""
    import git

    from .models.desired import GitLoader

    try:
        repository = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ValueError(f"{root} is not in a Git checkout: --offline compares two of its commits") from None
    try:
        loader = GitLoader(repository)
        states = []
        for revision, option in ((base_revision, "--base"), (head_revision, "--ref")):
            try:
                states.append(loader.load(repository.commit(revision).hexsha))
            except (git.BadName, ValueError) as exc:
                raise ValueError(f"cannot read {revision!r} in {root}: {exc} (fetch it, or name another "
                                 f"with {option})") from None
    finally:
        repository.close()
    base, desired = states
    server, records = offline_inputs(base)
    return preview(head_revision, desired, base, [server], records, scope=scope_of(desired, base), now=now,
                   allow_empty=False, offline=True)
