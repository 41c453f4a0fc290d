"""Desired state: every model file of a commit (or of a checkout), parsed and checked.

Files are read straight from Git objects, never from a work tree that someone may be writing to.
Loading is incremental: the next commit is the last one loaded with the files `git diff-tree`
says changed checked again (a full load, which lists only the namespace folders whose tree changed
and parses only the files whose blob changed, is the fallback for anything unusual), and a state's
models share what is unchanged with the state before: loading the next commit costs in proportion
to what changed, not to the size of the repository.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import os
import re
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # GitPython costs ~70 ms to import: imported where a commit is first read (see _commit)
    import git

from . import modelfile, naming
from .key import ModelKey, Problem
from .modelfile import ModelFields, ParseResult

MODELS_DIR = "models"
MODEL_SUFFIXES = (".yaml", ".yml")
PREFETCH_THRESHOLD = 64  # below this many unparsed blobs, one-by-one reads beat starting a process
INCREMENTAL_SHARE = 4  # a commit changing more than 1/4 of the files is loaded in full


@dataclass(frozen=True, slots=True)
class DesiredModel:
    """A valid model file: what it says and where it lives."""

    key: ModelKey
    fields: ModelFields
    path: str
    blob: str  # the file's Git blob SHA (or a content hash for a checkout): changes when the file does

    @property
    def reference(self) -> str:
        return self.fields.reference


@dataclass(frozen=True)
class DesiredState:
    """The models a commit asks for, and the problems that kept files out.

    `unreadable` holds the keys of model files that exist but could not be used (broken YAML, schema
    errors, a name that does not match the file, duplicates, a submodule or symbolic link in the
    file's place); `unreadable_namespaces` the namespaces whose folder is not a folder (a submodule
    or link in its place), and `all_unreadable` says `models/` itself is not one. Whoever acts on
    this state must keep the last good version of every model `is_unreadable` names, rather than
    treat it as removed.
    """

    commit: str | None
    models: Mapping[ModelKey, DesiredModel]
    problems: tuple[Problem, ...]
    unreadable: frozenset[ModelKey] = frozenset()
    unreadable_namespaces: frozenset[str] = frozenset()
    all_unreadable: bool = False
    # The models with a `servers:` selector (None: not known yet, see `with_selectors`).
    selective: frozenset[ModelKey] | None = field(default=None, compare=False, repr=False)
    # What the loader knows changed since the commit it loaded this state from (None: not known).
    changes: Changes | None = field(default=None, compare=False, repr=False)
    _placed: dict[tuple[tuple[str, str], ...], DesiredState] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    def with_selectors(self) -> frozenset[ModelKey]:
        """The models with a `servers:` selector: the only ones placement looks at (the loader says
        which; looked for once otherwise)."""
        if self.selective is None:
            object.__setattr__(self, "selective", frozenset(
                key for key, model in self.models.items() if model.fields.servers is not None))
        assert self.selective is not None
        return self.selective

    def is_unreadable(self, key: ModelKey) -> bool:
        """Is `key`'s model kept at its last good version because what stands for it cannot be read?"""
        return key not in self.models and (
            key in self.unreadable or key.namespace in self.unreadable_namespaces or self.all_unreadable)

    @property
    def any_unreadable(self) -> bool:
        """Could anything that may stand for a model not be read?"""
        return bool(self.unreadable or self.unreadable_namespaces or self.all_unreadable)

    def namespace_unreadable(self, namespace: str) -> bool:
        """Is the whole namespace kept as it was (its folder, or `models/`, cannot be read)?"""
        return self.all_unreadable or namespace in self.unreadable_namespaces

    def problem_of(self, key: ModelKey, path: str) -> Problem | None:
        """The problem that keeps `key`'s model (last read from `path`) unreadable: its file's, its
        namespace folder's or `models/`'s."""
        for where in (path, f"{MODELS_DIR}/{key.namespace}", MODELS_DIR):
            for problem in self.problems:
                if problem.path == where:
                    return problem
        return None

    def kept_reason(self, key: ModelKey, path: str) -> str:
        """The error a kept model shows: why what stands for it (last read from `path`) cannot be read."""
        problem = self.problem_of(key, path)
        if problem is None or problem.path == path:
            detail = problem.message if problem is not None else "see problems"
            return f"model file is invalid, keeping the last good version: {detail}"
        return str(problem)  # its namespace folder or models/ itself; the message says the model is kept

    def placed_on(self, labels: Mapping[str, str]) -> DesiredState:
        """The state as a server with these labels sees it: only the models whose `servers:`
        selector matches (a model without one goes to every server). What cannot be read stays
        unreadable: a broken file's model is kept on every server that holds it.

        Costs nothing when no model has a selector, and a look at those that have one otherwise,
        once per label set (servers with the same labels share one placement)."""
        selective = self.with_selectors()
        if not selective:
            return self
        cache_key = tuple(sorted(labels.items()))
        placed = self._placed.get(cache_key)
        if placed is None:
            excluded = frozenset(key for key in selective if not self.models[key].fields.servers.matches(labels))
            placed = self if not excluded else dataclasses.replace(
                self, models=_Without(self.models, excluded), selective=selective - excluded)
            self._placed[cache_key] = placed
        return placed

    def not_placed_on(self, labels: Mapping[str, str]) -> frozenset[ModelKey]:
        """The models whose selector keeps them off a server with these labels."""
        placed = self.placed_on(labels)
        return frozenset() if placed is self else self.with_selectors() - placed.with_selectors()

    def in_namespace(self, namespace: str) -> list[DesiredModel]:
        """The models of one namespace, ordered by name."""
        models = self.models  # the keys sorted, not (key, model) pairs made of every model
        return [models[k] for k in sorted(k for k in models if k.namespace == namespace)]


@dataclass(frozen=True)
class Changes:
    """The models whose file may differ between the commit `base` and a state loaded from it: added,
    removed or edited files, and files that became broken or readable again (a superset is allowed:
    whoever plans them finds nothing to do for the unchanged)."""

    base: str
    keys: frozenset[ModelKey]


class _Models(Mapping[ModelKey, DesiredModel]):
    """A state's models as the last state's (sorted) dict with a few changes on top, so that a load
    of one changed file neither copies nor re-sorts the hundred thousand others. The changes are
    folded into a new dict once they outgrow 1/32 of it: that copy, amortised, costs a few entries
    per change."""

    __slots__ = ("_base", "_over", "_len")

    def __init__(self, base: Mapping[ModelKey, DesiredModel], over: dict[ModelKey, DesiredModel | None],
                 length: int) -> None:
        self._base, self._over, self._len = base, over, length

    @classmethod
    def changed(cls, models: Mapping[ModelKey, DesiredModel],
                changes: Mapping[ModelKey, DesiredModel | None]) -> Mapping[ModelKey, DesiredModel]:
        """`models` with `changes` (key -> its model, None: gone) applied; `models` is left as it is."""
        length = len(models) + sum((value is not None) - (key in models) for key, value in changes.items())
        if isinstance(models, _Models):
            base, over = models._base, {**models._over, **changes}
        else:
            base, over = models, dict(changes)
        if len(over) <= max(64, len(base) >> 5):
            return cls(base, over, length)
        flat = dict(base)
        for key, value in over.items():
            if value is None:
                flat.pop(key, None)
            else:
                flat[key] = value
        return dict(sorted(flat.items())) if any(key not in base for key in over) else flat

    def __getitem__(self, key: ModelKey) -> DesiredModel:
        value = self._over.get(key, _MISSING)
        if value is _MISSING:
            return self._base[key]
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def get(self, key: ModelKey, default: object = None) -> object:  # type: ignore[override]
        value = self._over.get(key, _MISSING)
        if value is _MISSING:
            return self._base.get(key, default)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        value = self._over.get(key, _MISSING)  # type: ignore[call-overload]
        return key in self._base if value is _MISSING else value is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[ModelKey]:
        over, base = self._over, self._base
        kept = (key for key in base if over.get(key, True) is not None)
        added = sorted(key for key, value in over.items() if value is not None and key not in base)
        return heapq.merge(kept, added) if added else kept

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


class _Without(Mapping[ModelKey, DesiredModel]):
    """`models` less a few keys (those a server's labels keep off it), without copying the rest."""

    __slots__ = ("_models", "_excluded")

    def __init__(self, models: Mapping[ModelKey, DesiredModel], excluded: frozenset[ModelKey]) -> None:
        self._models, self._excluded = models, excluded

    def __getitem__(self, key: ModelKey) -> DesiredModel:
        if key in self._excluded:
            raise KeyError(key)
        return self._models[key]

    def __contains__(self, key: object) -> bool:
        return key not in self._excluded and key in self._models

    def __len__(self) -> int:
        return len(self._models) - len(self._excluded)

    def __iter__(self) -> Iterator[ModelKey]:
        return (key for key in self._models if key not in self._excluded)


_MISSING = object()


def changed_between(previous: DesiredState, desired: DesiredState) -> set[ModelKey]:
    """The models whose file differs between two desired states: added, removed or edited files,
    and files that became broken or readable again. What a plan of the newer state needs to look
    at beyond the models with work left."""
    old_models = previous.models
    changed = {key for key, model in desired.models.items()
               if (old := old_models.get(key)) is None or old.blob != model.blob}
    changed.update(old_models.keys() - desired.models.keys())
    changed.update(desired.unreadable ^ previous.unreadable)
    return changed


class _SourceFile(NamedTuple):  # a named tuple: one is made for every file a load reads
    path: str  # relative to the repository root, with '/'
    blob: str
    read: Callable[[], bytes]
    special: str | None = None  # what the entry is when not a regular file ("a symbolic link"...): never read


class _Entry(NamedTuple):
    binsha: bytes
    mode: int
    name: str

    @property
    def is_tree(self) -> bool:
        return self.mode == _TREE_MODE


_TREE_MODE, _LINK_MODE, _SUBMODULE_MODE = 0o040000, 0o120000, 0o160000
_SPECIAL_KINDS = {_LINK_MODE: ("a symbolic link", "symbolic links"), _SUBMODULE_MODE: ("a Git submodule", "Git submodules")}


def special_kind(mode: int) -> str | None:
    """What a tree entry of `mode` is when it is neither a folder nor a regular file ("a symbolic
    link", "a Git submodule"...); None when it is one."""
    if mode == _TREE_MODE or mode & 0o170000 == 0o100000:
        return None
    return _SPECIAL_KINDS.get(mode, (f"an entry of mode {mode:o}",))[0]
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_NULL_HEX_SHA = "0" * 40  # git.Blob.NULL_HEX_SHA: a file read from disk, not from a commit


class _Listed(NamedTuple):
    """A model file as its tree lists it, before anything is read."""

    path: str
    blob: str
    binsha: bytes
    mode: int

    def source(self, loader: GitLoader) -> _SourceFile:
        return _SourceFile(self.path, self.blob, partial(loader._read_blob, self.blob, self.binsha), special_kind(self.mode))


@dataclass(frozen=True, slots=True)
class _FileResult:
    """A file that gives no model (broken, misplaced, or not a regular file): what stops it."""

    path: str
    blob: str
    claimed: ModelKey | None  # the model this file stands for, known from its path even when broken
    problems: tuple[Problem, ...]


_Checked = DesiredModel | _FileResult
"""A file checked: its model (a valid file's result is its model, nothing more is kept), or what
stops it."""


def _claim(result: _Checked) -> ModelKey | None:
    """The model a checked file stands for (None: none, e.g. a file too deep)."""
    return result.key if type(result) is DesiredModel else result.claimed  # type: ignore[union-attr]


def _problems(result: _Checked) -> tuple[Problem, ...]:
    return () if type(result) is DesiredModel else result.problems  # type: ignore[union-attr]




@dataclass
class _Namespace:
    """One namespace directory, checked and assembled: cached by its tree SHA. An incremental load
    edits it in place (the loader is its only holder; a state's models are its own mapping)."""

    models: dict[ModelKey, DesiredModel]  # in name order, but for new ones at the end while `appended`
    problems: tuple[Problem, ...]
    unreadable: frozenset[ModelKey]
    # By path, the checked files that are not their model in `models` (broken, misplaced, duplicates):
    # with `models`, every file's result, so that a file whose path and blob are unchanged keeps it.
    others: dict[str, _Checked]
    selective: frozenset[ModelKey]  # its models with a `servers:` selector
    appended: bool = False

    def result(self, path: str) -> _Checked | None:
        """The result of the file at `path` when it was last checked (None: no such file)."""
        found = self.others.get(path)
        if found is None:
            parts = path.split("/")
            if len(parts) == 3:  # only a file directly in the folder is a namespace's model
                model = self.models.get(ModelKey(parts[1], parts[2].rpartition(".")[0]))
                if model is not None and model.path == path:
                    return model
        return found

    def in_order(self) -> dict[ModelKey, DesiredModel]:
        """The models, in name order."""
        if self.appended:
            self.models, self.appended = dict(sorted(self.models.items())), False
        return self.models


@dataclass
class LoadStats:
    """Counters that show how much work a load did (for tests and benchmarks)."""

    parsed: int = 0
    namespaces_listed: int = 0
    loads: int = 0
    incremental: int = 0  # loads made from the last one by the changed paths
    files_checked: int = 0  # files checked again by incremental loads


class GitLoader:
    """Loads desired state from commits of one repository, reusing work between commits.

    With `more` repositories (clones of the same remote), a commit is read from the first that has
    it: what is cached is named by content (blob and tree SHAs), so it serves every clone alike.
    Not thread-safe: one loader belongs to one refresh path, or to a `SharedLoader`.
    """

    def __init__(self, repo: git.Repo, more: Sequence[git.Repo] = ()) -> None:
        self._repo = repo
        self._repos = (repo, *more)
        self._source: git.Repo | None = None  # the clone the commit being loaded was fetched into
        self._parsed: dict[str, ParseResult] = {}  # by blob, during one load: a content in several files is parsed once
        self._namespaces: dict[tuple[str, str], _Namespace] = {}
        self._stream: BlobStream | None = None  # the blobs of the load in progress, read ahead
        self._last_commit = ""
        self._last: tuple[DesiredState, list[_Entry]] | None = None  # the last state loaded, and its models/ entries
        self.stats = LoadStats()

    def load(self, commit: str, source: git.Repo | None = None) -> DesiredState:
        """The desired state at `commit` (a full SHA, or any revision GitPython resolves), read from
        `source` when given (the clone it was fetched into: see `_commit`).

        From the last state loaded when it can: `git diff-tree` names the files that changed (at
        git's speed, however large the namespace) and only those are checked again. Anything
        unusual (a namespace folder added or removed, an entry that is not a regular file, a file
        too deep or misplaced, a duplicate, more than 1/INCREMENTAL_SHARE of the files changed) is
        a full load, with the same result."""
        self._source = source
        last = self._last
        if last is not None and _FULL_SHA.match(commit):
            if commit == last[0].commit:
                return last[0]
            diff = self._diff(last[0], commit)
            if diff is not None:
                state = self._apply(commit, *diff)
                if state is not None:
                    return state
        return self._load_full(commit)

    def _load_full(self, commit: str) -> DesiredState:
        self.stats.loads += 1
        root = self._commit(commit).tree
        models_entries = [e for e in self._entries(root.binsha) if e.name == MODELS_DIR]
        used: dict[tuple[str, str], _Namespace] = {}
        problems: list[Problem] = []
        listed: dict[tuple[str, str], list[_Listed]] = {}
        unreadable_namespaces: set[str] = set()
        all_unreadable = False
        models_tree = None
        if models_entries and models_entries[0].is_tree:
            models_tree = models_entries[0].binsha
        elif models_entries:
            kind = special_kind(models_entries[0].mode) or "a file"
            problems.append(_models_not_a_folder(kind))
            all_unreadable = True
        for entry in self._entries(models_tree) if models_tree else []:
            kind = special_kind(entry.mode)
            if kind is not None:
                problems.append(_special_entry(f"{MODELS_DIR}/{entry.name}", kind, unreadable_namespaces))
            elif entry.is_tree:
                cache_key = (entry.name, entry.binsha.hex())
                namespace = self._namespaces.get(cache_key)
                if namespace is None:
                    self.stats.namespaces_listed += 1
                    listed[cache_key] = self._files(entry.binsha, f"{MODELS_DIR}/{entry.name}")
                else:
                    used[cache_key] = namespace
            elif _is_model_file(entry.name):
                problems.append(_misplaced(f"{MODELS_DIR}/{entry.name}"))
        # Within a changed namespace, a file whose path and blob are unchanged keeps its result, so
        # one edited file in a directory of ten thousand checks one file.
        before = {name: namespace for (name, _), namespace in self._namespaces.items()}
        checked = {k: _results_of(before.get(k[0]), files) for k, files in listed.items()}
        fresh = {k: [f.source(self) for f in files if getattr(checked[k].get(f.path), "blob", None) != f.blob]
                 for k, files in listed.items()}
        # One pipelined read for every new blob of every changed namespace, in the order they are parsed.
        self._prefetch([f.blob for files in fresh.values() for f in files if f.blob not in self._parsed and not f.special])
        try:
            for cache_key, files in listed.items():
                results = _load_namespace(cache_key[0], fresh[cache_key], self._parse)
                by_path = {r.path: r for r in results}
                ordered = [by_path.get(f.path) or checked[cache_key][f.path] for f in files]
                used[cache_key] = _assemble_namespace(ordered)
        finally:
            self._end_prefetch()
        # Keep only what the newest commit uses, so the caches never outgrow one repository.
        self._namespaces = used
        self._last = None
        self._parsed.clear()  # a file's fields live on in its model: kept twice, they would cost a dict entry a model
        state = _merge(self._last_commit, [used[k] for k in sorted(used)], problems, unreadable_namespaces, all_unreadable)
        self._last = (state, self._entries(models_tree)) if models_tree else None
        # What was just loaded lives until the next commit. Moving it out of the cyclic garbage
        # collector's generations keeps full collections from re-scanning it (with ten thousand
        # models they took 100-250 ms each); being acyclic, it is still freed by reference counting.
        gc.freeze()
        return state

    def load_edited(self, commit: str, parent: str, edits: Mapping[str, str | None],
                    source: git.Repo | None = None) -> DesiredState:
        """The desired state at `commit`, which is `parent` with only the files `edits` changed (path ->
        its new blob SHA, or None when removed), as a write made it.

        When the last load was of `parent` and every edit is a model file of a namespace folder already
        loaded, whose model no other file claims, the state is the last one with those files checked
        again: a write costs its own files, not the hundred thousand others of its namespace. Anything
        else (a new namespace, a duplicate, a commit that changed more) is a full load, with the
        same result."""
        self._source = source
        last = self._last
        if last is None or last[0].commit != parent or not _FULL_SHA.match(commit):
            return self._load_full(commit)
        for path in edits:
            parts = path.split("/")
            if len(parts) != 3 or parts[0] != MODELS_DIR or not _is_model_file(parts[2]):
                return self._load_full(commit)
        return self._apply(commit, edits, set()) or self._load_full(commit)

    def _diff(self, last: DesiredState, commit: str) -> tuple[dict[str, str | None], set[str]] | None:
        """What changed under models/ from the last state's commit to `commit`, as `_apply` takes it:
        the model files (path -> new blob, None: removed) and the entries of models/ changed only in
        files a load ignores; None when a full load is needed."""
        try:
            output = subprocess.run(["git", "--git-dir", os.fspath((self._source or self._repo).git_dir), "diff-tree", "-r", "-z",
                                     "--no-renames", last.commit, commit, "--", MODELS_DIR],
                                    capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None  # e.g. the last commit is gone from a clone made again: a full load says what is there
        fields = output.split(b"\0")
        edits: dict[str, str | None] = {}
        ignored: set[str] = set()
        limit = max(PREFETCH_THRESHOLD, (len(last.models) + len(last.unreadable)) // INCREMENTAL_SHARE)
        # `:<old mode> <new mode> <old blob> <new blob> <status>` NUL `<path>` NUL, per changed file
        for meta, raw_path in zip(fields[0::2], fields[1::2]):
            old_mode, new_mode, _, blob, _ = meta.lstrip(b":").split(b" ")
            if any(special_kind(mode) for mode in {int(old_mode, 8), int(new_mode, 8)} - {0}):
                return None  # a link, a submodule: reported by a full load
            parts = raw_path.decode("utf-8", "surrogateescape").split("/")
            if len(parts) == 3 and _is_model_file(parts[2]):
                edits["/".join(parts)] = blob.decode() if int(new_mode, 8) else None
            elif len(parts) in (2, 3) and not _is_model_file(parts[-1]):
                ignored.add(parts[1])  # a README beside the models, say: no load reads it
            else:
                return None  # misplaced or too deep: a problem a full load reports
            if len(edits) > limit:
                return None
        return edits, ignored - {path.split("/")[1] for path in edits}

    def _apply(self, commit: str, edits: Mapping[str, str | None], ignored: set[str]) -> DesiredState | None:
        """The last state with `edits` (model files, path -> blob or None) checked again, where
        `ignored` names the entries of models/ that changed only in files no load reads; None when
        that cannot be done (a full load can)."""
        assert self._last is not None
        state, old_entries = self._last
        by_namespace: dict[str, dict[str, str | None]] = defaultdict(dict)
        for path, blob in edits.items():
            by_namespace[path.split("/")[1]][path] = blob
        new_entries = self._models_entries(commit)
        old_trees = {e.name: e for e in old_entries}
        new_trees = {e.name: e for e in new_entries or ()}
        changed_names = set(by_namespace) | ignored
        # Nothing but those entries may differ under models/, and the edited ones were folders before.
        if new_entries is None or set(old_trees) != set(new_trees) or any(
                (old_trees[n] != new_trees[n]) != (n in changed_names) for n in old_trees) or any(
                not old_trees[n].is_tree or not new_trees[n].is_tree for n in by_namespace) or any(
                old_trees[n].is_tree != new_trees[n].is_tree for n in changed_names):
            return None
        self._prefetch([blob for blob in edits.values() if blob is not None and blob not in self._parsed])
        checked = []
        try:
            for name in changed_names:
                namespace = self._namespaces.get((name, old_trees[name].binsha.hex())) if old_trees[name].is_tree else None
                if namespace is None and name in by_namespace:
                    return None
                if namespace is not None:
                    results = _check_edits(name, namespace, by_namespace.get(name, {}), self)
                    if results is None:
                        return None
                    checked.append((name, namespace, by_namespace.get(name, {}), *results))
        finally:
            self._end_prefetch()
        # Nothing can fail from here on: the namespaces are edited in place.
        changes: dict[ModelKey, DesiredModel | None] = {}
        unreadable, selective = set(), set()
        for name, namespace, changed, before, after in checked:
            keys = _edit_namespace(namespace, changed, before, after)
            del self._namespaces[(name, old_trees[name].binsha.hex())]
            self._namespaces[(name, new_trees[name].binsha.hex())] = namespace
            changes.update((key, namespace.models.get(key)) for key in keys)
            unreadable.update(keys & namespace.unreadable)
            selective.update(keys & namespace.selective)
            self.stats.files_checked += len(changed)
        self._parsed.clear()  # as after a full load: the models keep what was parsed
        self.stats.loads += 1
        self.stats.incremental += 1
        self._last_commit = commit
        top = [p for p in state.problems if p.path.count("/") < 2]  # models/ itself and entries directly in it
        problems = tuple(sorted(top + [p for n in self._namespaces.values() for p in n.problems]))
        new_state = DesiredState(
            commit=commit, models=_Models.changed(state.models, changes), problems=problems,
            unreadable=frozenset((state.unreadable - changes.keys()) | unreadable),
            unreadable_namespaces=state.unreadable_namespaces, all_unreadable=state.all_unreadable,
            selective=frozenset((state.with_selectors() - changes.keys()) | selective),
            changes=Changes(state.commit or "", frozenset(changes)))
        self._last = (new_state, new_entries)
        gc.freeze()
        return new_state


    def _models_entries(self, commit: str) -> list[_Entry] | None:
        """The entries of `models/` at `commit`; None when it is not a folder."""
        root = self._commit(commit).tree
        entries = [e for e in self._entries(root.binsha) if e.name == MODELS_DIR]
        if not entries or not entries[0].is_tree:
            return None
        return self._entries(entries[0].binsha)

    def _commit(self, commit: str) -> git.Commit:
        """`commit`, from the load's source, else the first repository that has it; the rest of this
        load reads that one. The source comes first because another clone may be fetching the same
        commit right now: a small fetch unpacks its objects one by one, the commit before its trees,
        so a clone that has the commit may not have its trees yet (the ref moves only at the end)."""
        import git  # here, not at the top: a process whose cycles stop after the fetch never reads a commit

        source = self._source
        order = self._repos if source is None else (source, *(r for r in self._repos if r is not source))
        for repo in order[:-1]:
            try:
                if _FULL_SHA.match(commit):
                    repo.odb.info(bytes.fromhex(commit))
                else:
                    repo.commit(commit)
            except (ValueError, git.exc.ODBError):
                continue
            break
        else:
            repo = order[-1]  # the last one, or the only one, says what is wrong if it has not either
        self._repo = repo
        # A full SHA needs no lookup (`repo.commit` would ask git to resolve it first).
        obj = git.Commit(repo, bytes.fromhex(commit)) if _FULL_SHA.match(commit) else repo.commit(commit)
        self._last_commit = obj.hexsha
        return obj

    def _entries(self, binsha: bytes) -> list[_Entry]:
        return _tree_entries(self._repo.odb.stream(binsha).read())

    def _files(self, binsha: bytes, prefix: str) -> list[_Listed]:
        """Model files under a tree, recursively (deeper ones are reported, not loaded), and every
        entry that is neither a folder nor a regular file (reported, never read)."""
        files = []
        for entry in self._entries(binsha):
            if entry.mode == _TREE_MODE:
                files.extend(self._files(entry.binsha, f"{prefix}/{entry.name}"))
            elif entry.name.endswith(MODEL_SUFFIXES) or special_kind(entry.mode) is not None:
                # Not interned: one loader makes each string once, and everything else holds that one (an
                # interned string costs a slot in the interpreter's table too).
                files.append(_Listed(f"{prefix}/{entry.name}", entry.binsha.hex(), entry.binsha, entry.mode))
        return files

    def _parse(self, file: _SourceFile) -> ParseResult:
        cached = self._parsed.get(file.blob)
        if cached is None:
            self.stats.parsed += 1
            cached = self._parsed[file.blob] = _read_and_parse(file)
        return cached

    def _prefetch(self, blobs: list[str]) -> None:
        """Start reading many blobs in one pipelined `git cat-file --batch` (`BlobStream`).

        GitPython's shared cat-file process answers one object per round trip; for a whole
        repository the round trips cost more than the parsing, so large reads go in one batch.
        """
        if len(blobs) >= PREFETCH_THRESHOLD:
            self._stream = BlobStream(self._repo.git_dir, blobs)

    def _end_prefetch(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _read_blob(self, hexsha: str, binsha: bytes) -> bytes:
        content = self._stream.take(hexsha) if self._stream is not None else None
        if content is None:
            return _read_blob(self._repo, binsha)
        if len(content) > modelfile.MAX_FILE_BYTES:
            raise modelfile.FileTooLarge(len(content))
        return content


class Clone(Protocol):
    """A clone a `SharedLoader` reads (`git.repo.GitRepo`): its repository, and a number that
    changes when the clone is made again."""

    @property
    def repo(self) -> git.Repo: ...

    generation: int


class SharedLoader:
    """One `GitLoader` over several clones of one remote (`serve`: the reconciler's and the API's),
    so that each commit is listed and parsed once and both sides hold the same desired models.
    Thread-safe: loads run one at a time, and a commit loaded last is handed out again as it is."""

    def __init__(self, *clones: Clone) -> None:
        self._clones = clones
        self._lock = threading.Lock()
        self.stats = LoadStats()
        self._loader: GitLoader | None = None
        self._generations: tuple[int, ...] = ()
        self._last: DesiredState | None = None

    @property
    def last(self) -> DesiredState | None:
        """The state loaded last (None before any), as it was handed out."""
        return self._last

    def load(self, commit: str, source: Clone | None = None) -> DesiredState:
        """The desired state at `commit`, read from `source`, the clone it was fetched into, when
        given (see `GitLoader.load`)."""
        with self._lock:
            if self._last is not None and self._last.commit == commit:
                return self._last
            self._last = self._current().load(commit, source.repo if source is not None else None)
            return self._last

    def load_edited(self, commit: str, parent: str, edits: Mapping[str, str | None],
                    source: Clone | None = None) -> DesiredState:
        """The desired state at `commit`, `parent` with `edits` (see `GitLoader.load_edited`)."""
        with self._lock:
            if self._last is not None and self._last.commit == commit:
                return self._last
            self._last = self._current().load_edited(commit, parent, edits, source.repo if source is not None else None)
            return self._last

    def _current(self) -> GitLoader:
        generations = tuple(clone.generation for clone in self._clones)
        if self._loader is None or generations != self._generations:  # a clone was set aside and made again
            repos = [clone.repo for clone in self._clones]
            self._loader, self._generations, self._last = GitLoader(repos[0], repos[1:]), generations, None
            self._loader.stats = self.stats
        return self._loader


def load_directory(root: str | os.PathLike[str]) -> DesiredState:
    """The desired state of a checkout on disk, as `ollama-gitops validate` checks it."""
    root = Path(root)
    models_dir = root / MODELS_DIR
    namespaces: list[_Namespace] = []
    problems: list[Problem] = []
    unreadable_namespaces: set[str] = set()
    root_kind = _path_kind(models_dir) if models_dir.exists() or models_dir.is_symlink() else None
    if root_kind is None and models_dir.is_file():
        root_kind = "a file"
    if root_kind is not None:
        problems.append(_models_not_a_folder(root_kind))
    elif models_dir.is_dir():
        for entry in sorted(models_dir.iterdir()):
            relative = entry.relative_to(root).as_posix()
            kind = _path_kind(entry)
            if kind is not None:
                problems.append(_special_entry(relative, kind, unreadable_namespaces))
            elif entry.is_dir():
                files = _directory_files(root, entry)
                namespaces.append(_assemble_namespace(_load_namespace(entry.name, files, _read_and_parse)))
            elif _is_model_file(entry.name):
                problems.append(_misplaced(relative))
    return _merge(None, namespaces, problems, unreadable_namespaces, root_kind is not None)


def _path_kind(path: Path) -> str | None:
    """What a path in a checkout is when it is neither a folder nor a regular file; None when it is one.

    A checked-out submodule is a folder with a `.git` of its own (a file, or a folder).
    """
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        return "a Git submodule" if (path / ".git").exists() else None
    return None if path.is_file() else "neither a regular file nor a folder"


def _directory_files(root: Path, namespace_dir: Path) -> Iterator[_SourceFile]:
    for dirpath, dirnames, filenames in os.walk(namespace_dir):
        dirnames.sort()
        entries = sorted([(name, True) for name in dirnames] + [(name, False) for name in filenames])
        dirnames.clear()
        for name, is_dir in entries:
            path = Path(dirpath) / name
            kind = _path_kind(path)
            if is_dir and kind is None:
                dirnames.append(name)  # walk into it (os.walk never follows a linked folder)
                continue
            if kind is None and not _is_model_file(name):
                continue
            yield _SourceFile(
                path=path.relative_to(root).as_posix(),
                blob=_NULL_HEX_SHA,
                read=_file_reader(path),
                special=kind,
            )


def _load_namespace(
    namespace: str, files: Iterable[_SourceFile], parse: Callable[[_SourceFile], ParseResult]
) -> tuple[_Checked, ...]:
    """Check and parse the model files under one namespace directory."""
    namespace_error = naming.dns1123_label_error(namespace)
    results = []
    for file in files:
        name = file.path.rpartition("/")[2]
        if file.special is not None and (file.path.count("/") != 2 or not _is_model_file(name)):
            problem = Problem(file.path, None, f"{file.special} is not allowed under {MODELS_DIR}/: only model files "
                                               "and namespace folders belong there; remove it")
            results.append(_FileResult(file.path, file.blob, None, (problem,)))
            continue
        if file.path.count("/") != 2:
            results.append(_FileResult(file.path, file.blob, None, (_too_deep(file.path),)))
            continue
        if namespace_error:
            problem = Problem(file.path, None, f"namespace directory '{namespace}' is not a valid namespace name: {namespace_error}")
            results.append(_FileResult(file.path, file.blob, None, (problem,)))
            continue
        claimed = ModelKey(namespace, name.rpartition(".")[0])
        if file.special is not None:
            plural = {kind: many for kind, many in _SPECIAL_KINDS.values()}.get(file.special, file.special)
            problem = Problem(file.path, None, f"model files must be regular files, not {plural}")
            results.append(_FileResult(file.path, file.blob, claimed, (problem,)))
            continue
        results.append(_check_file(file, claimed, parse(file)))
    return tuple(results)


def _check_file(file: _SourceFile, claimed: ModelKey, parsed: ParseResult) -> _Checked:
    if not isinstance(parsed, ModelFields):
        problems = tuple(Problem(file.path, e.line, e.message) for e in parsed)
        return _FileResult(file.path, file.blob, claimed, problems)
    name = naming.resource_name(parsed.name, parsed.tag)
    name_error = naming.dns1123_subdomain_error(name)
    if name_error:
        message = f"model {parsed.reference} gives the resource name '{name}', which {name_error}"
        return _FileResult(file.path, file.blob, claimed, (Problem(file.path, None, message),))
    if name != claimed.name:
        suffix = file.path[file.path.rindex("."):]
        message = (
            f"file name does not match the model: {parsed.reference} must be in "
            f"'{claimed.namespace}/{name}{suffix}' (the name is <name>-<tag>, lowercased, "
            "with characters outside [a-z0-9.-] replaced by '-')"
        )
        return _FileResult(file.path, file.blob, claimed, (Problem(file.path, None, message),))
    return DesiredModel(claimed, parsed, file.path, file.blob)


def _results_of(namespace: _Namespace | None, files: list[_Listed]) -> dict[str, _Checked]:
    """The results `namespace` has for these files, by path (none for a namespace not loaded before)."""
    if namespace is None:
        return {}
    return {f.path: result for f in files if (result := namespace.result(f.path)) is not None}


def _assemble_namespace(results: Iterable[_Checked]) -> _Namespace:
    """The models of one namespace directory; files that claim the same model are all refused."""
    results = tuple(results)
    problems: list[Problem] = []
    by_key: dict[ModelKey, list[_Checked]] = defaultdict(list)
    for result in results:
        problems.extend(_problems(result))
        claimed = _claim(result)
        if claimed is not None:
            by_key[claimed].append(result)
    models: dict[ModelKey, DesiredModel] = {}
    unreadable: set[ModelKey] = set()
    for key in sorted(by_key):
        claims = by_key[key]
        if len(claims) > 1:
            paths = sorted(c.path for c in claims)
            for path in paths:
                others = ", ".join(p for p in paths if p != path)
                problems.append(Problem(path, None, f"model {key} is defined more than once (also in {others})"))
            unreadable.add(key)
        elif type(claims[0]) is DesiredModel:
            models[key] = claims[0]
        else:
            unreadable.add(key)
    selective = frozenset(key for key, model in models.items() if model.fields.servers is not None)
    others = {r.path: r for r in results if type(r) is not DesiredModel or models.get(r.key) is not r}
    return _Namespace(models, tuple(problems), frozenset(unreadable), others, selective)


def _check_edits(name: str, namespace: _Namespace, changed: Mapping[str, str | None], loader: GitLoader
                 ) -> tuple[tuple[_Checked, ...], tuple[_Checked, ...]] | None:
    """The results the files `changed` (path -> blob SHA, None: removed) had and have now; None when a
    model they claim is claimed by another file too (a full assembly sorts that out)."""
    before = tuple(result for path in changed if (result := namespace.result(path)) is not None)
    fresh = [_Listed(path, blob, bytes.fromhex(blob), 0o100644).source(loader) for path, blob in changed.items() if blob]
    after = _load_namespace(name, fresh, loader._parse)
    prefix = f"{MODELS_DIR}/{name}/"
    for key in {claimed for r in (*before, *after) if (claimed := _claim(r)) is not None}:
        # Only a file directly in the folder, named for the model, claims it: two paths to look at.
        claimed_elsewhere = any((path := f"{prefix}{key.name}{suffix}") not in changed
                                and namespace.result(path) is not None for suffix in MODEL_SUFFIXES)
        if claimed_elsewhere or sum(1 for r in after if _claim(r) == key) > 1:
            return None
    return before, after


def _edit_namespace(namespace: _Namespace, changed: Mapping[str, str | None], before: tuple[_Checked, ...],
                    after: tuple[_Checked, ...]) -> set[ModelKey]:
    """Put the files' new results (`_check_edits`) in `namespace`; returns the models they claim(ed)."""
    keys = {claimed for r in (*before, *after) if (claimed := _claim(r)) is not None}
    found = {r.key: r for r in after if type(r) is DesiredModel}
    for result in before:
        namespace.others.pop(result.path, None)
    # `_check_edits` made sure no two files claim one model: each model found is its model's file.
    namespace.others.update((r.path, r) for r in after if type(r) is not DesiredModel)
    for key in keys:
        model = found.get(key)
        if model is None:
            namespace.models.pop(key, None)
        else:
            if key not in namespace.models:
                namespace.appended = True  # put in name order when a full load next uses it
            namespace.models[key] = model
    broken = {r.claimed for r in after if type(r) is _FileResult and r.claimed is not None}
    namespace.unreadable = frozenset((namespace.unreadable - keys) | broken)
    namespace.selective = frozenset((namespace.selective - keys) | {k for k, m in found.items() if m.fields.servers is not None})
    namespace.problems = tuple(p for p in namespace.problems if p.path not in changed) + tuple(
        p for r in after for p in _problems(r))
    return keys


def _merge(commit: str | None, namespaces: list[_Namespace], problems: list[Problem],
           unreadable_namespaces: set[str], all_unreadable: bool) -> DesiredState:
    """Join namespaces (in name order, so models stay sorted) into one desired state."""
    models: dict[ModelKey, DesiredModel] = {}
    unreadable: set[ModelKey] = set()
    selective: set[ModelKey] = set()
    for namespace in namespaces:
        models.update(namespace.in_order())
        unreadable.update(namespace.unreadable)
        selective.update(namespace.selective)
        problems.extend(namespace.problems)
    return DesiredState(commit=commit, models=models, problems=tuple(sorted(problems)), unreadable=frozenset(unreadable),
                        unreadable_namespaces=frozenset(unreadable_namespaces), all_unreadable=all_unreadable,
                        selective=frozenset(selective))


_TREE_ENTRY = re.compile(rb"([0-7]+) ([^\0]*)\0(.{20})", re.DOTALL)


def _tree_entries(data: bytes) -> list[_Entry]:
    """The entries of a raw Git tree object: `<octal mode> <name>NUL<20-byte SHA>`, repeated.

    GitPython's parser also checks every name as a safe checkout path, which costs more than the
    parsing; nothing here is checked out, so the plain format is read directly (one regular
    expression pass: a namespace of ten thousand files lists in a few milliseconds).
    """
    return [_Entry(sha, int(mode, 8), name.decode("utf-8", "surrogateescape"))
            for mode, name, sha in _TREE_ENTRY.findall(data)]


def _read_and_parse(file: _SourceFile) -> ParseResult:
    try:
        return modelfile.parse(file.read())
    except modelfile.FileTooLarge as exc:
        return exc.errors


class BlobStream:
    """Many blobs read in one `git cat-file --batch --buffer`, handed out as git writes them.

    The blobs are taken in the order they were asked for, so the caller parses each one while git
    reads the next ones (on another core) instead of waiting for all of them first; `--buffer`
    makes git write in large blocks rather than flush after each blob. A blob taken out of order
    is found all the same (those before it are kept until taken). Close it once done (or use it as
    a context manager): what was not taken is discarded and the process ended."""

    def __init__(self, git_dir: str | os.PathLike[str], blobs: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(blobs))
        self._left = len(wanted)
        self._early: dict[str, bytes] = {}
        self._process = subprocess.Popen(["git", "--git-dir", os.fspath(git_dir), "cat-file", "--batch", "--buffer"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        request = "".join(f"{sha}\n" for sha in wanted).encode()
        # Written from a thread: git answers while it reads, and would block on a full pipe otherwise.
        self._writer = threading.Thread(target=self._write, args=(request,), name="blob-stream", daemon=True)
        self._writer.start()

    def _write(self, request: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(request)
            stdin.close()
        except OSError:  # git stopped early (closed, or failed): what it wrote is all there is
            pass

    def take(self, sha: str) -> bytes | None:
        """The content of blob `sha` (asked for at the start), or None when git has no such blob."""
        content = self._early.pop(sha, None)
        if content is not None:
            return content
        stdout = self._process.stdout
        assert stdout is not None
        while self._left:
            self._left -= 1
            header = stdout.readline().split()
            if not header:  # git ended early: leave the rest to the one-by-one reader, which says why
                self._left = 0
                break
            if len(header) != 3:  # "<sha> missing"
                continue
            data = stdout.read(int(header[2]))
            stdout.read(1)  # the newline after each object
            if header[0] == sha.encode():
                return data
            self._early[header[0].decode()] = data
        return None

    def close(self) -> None:
        """End git (if blobs were left untaken) and free what was read ahead."""
        self._early.clear()
        if self._process.poll() is None:
            self._process.kill()
        self._writer.join()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:  # stdin's last bytes could not be flushed to a git that had ended
                pass
        self._process.wait()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_blob(repo: git.Repo, binsha: bytes) -> bytes:
    stream = repo.odb.stream(binsha)
    if stream.size > modelfile.MAX_FILE_BYTES:
        while stream.read(1 << 20):  # the shared cat-file pipe must be emptied all the same
            pass
        raise modelfile.FileTooLarge(stream.size)
    return stream.read()


def _file_reader(file: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        size = file.stat().st_size
        if size > modelfile.MAX_FILE_BYTES:
            raise modelfile.FileTooLarge(size)
        return file.read_bytes()

    return read


def _is_model_file(name: str) -> bool:
    return name.endswith(MODEL_SUFFIXES)


def _models_not_a_folder(kind: str) -> Problem:
    return Problem(MODELS_DIR, None, f"{MODELS_DIR} is {kind}, not a folder: nothing in it can be read, so every "
                                     "model keeps its last good version; make it a folder of namespace folders again")


def _special_entry(path: str, kind: str, unreadable_namespaces: set[str]) -> Problem:
    """A problem for an entry directly under models/ that is neither a folder nor a regular file.

    It may stand for a namespace folder (a submodule or link in its place): the namespace's
    recorded models are then kept, as a broken file's model is.
    """
    name = PurePosixPath(path).name
    if naming.dns1123_label_error(name) is None:
        unreadable_namespaces.add(name)
        return Problem(path, None, f"namespace folders must be folders, not {kind}: the models of namespace "
                                   f"'{name}' keep their last good version until it is a folder again")
    return Problem(path, None, f"{kind} is not allowed under {MODELS_DIR}/: only namespace folders belong there; remove it")


def _misplaced(path: str) -> Problem:
    name = PurePosixPath(path).name
    return Problem(path, None, f"model files go in models/<namespace>/; move it to e.g. models/default/{name}")


def _too_deep(path: str) -> Problem:
    parts = PurePosixPath(path).parts
    return Problem(path, None, f"model files go directly in models/<namespace>/; move it to models/{parts[1]}/{parts[-1]}")
