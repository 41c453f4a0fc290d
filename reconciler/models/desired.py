"""Desired state: every model file of a commit (or of a checkout), parsed and checked.

Files are read straight from Git objects, never from a work tree that someone may be writing to.
Loading is incremental: a namespace directory whose tree is unchanged is not even listed again,
and a file whose blob is unchanged is not parsed again, so loading the next commit costs in
proportion to what changed.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import os
import re
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Protocol

import git

from . import modelfile, naming
from .modelfile import ModelFields, ParseResult

MODELS_DIR = "models"
MODEL_SUFFIXES = (".yaml", ".yml")
PREFETCH_THRESHOLD = 64  # below this many unparsed blobs, one-by-one reads beat starting a process


class ModelKey(NamedTuple):
    """A model's identity: the namespace directory and the resource name (the file's stem).

    A named tuple rather than a dataclass: keys are hashed and compared by the ten thousand on
    every load, and tuples do that in C.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """Why a file is not (or not entirely) part of the desired state."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


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
        unreadable: a broken file's model is kept on every server that holds it."""
        placed = {key: model for key, model in self.models.items()
                  if model.fields.servers is None or model.fields.servers.matches(labels)}
        return self if len(placed) == len(self.models) else dataclasses.replace(self, models=placed)

    def in_namespace(self, namespace: str) -> list[DesiredModel]:
        """The models of one namespace, ordered by name."""
        models = self.models  # the keys sorted, not (key, model) pairs made of every model
        return [models[k] for k in sorted(k for k in models if k.namespace == namespace)]


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


@dataclass(frozen=True)
class _SourceFile:
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
    path: str
    blob: str
    model: DesiredModel | None
    claimed: ModelKey | None  # the model this file stands for, known from its path even when broken
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class _Namespace:
    """One namespace directory, checked and assembled: cached whole by its tree SHA."""

    models: dict[ModelKey, DesiredModel]  # sorted by name
    problems: tuple[Problem, ...]
    unreadable: frozenset[ModelKey]
    files: tuple[_FileResult, ...]


@dataclass
class LoadStats:
    """Counters that show how much work a load did (for tests and benchmarks)."""

    parsed: int = 0
    namespaces_listed: int = 0
    loads: int = 0


class GitLoader:
    """Loads desired state from commits of one repository, reusing work between commits.

    With `more` repositories (clones of the same remote), a commit is read from the first that has
    it: what is cached is named by content (blob and tree SHAs), so it serves every clone alike.
    Not thread-safe: one loader belongs to one refresh path, or to a `SharedLoader`.
    """

    def __init__(self, repo: git.Repo, more: Sequence[git.Repo] = ()) -> None:
        self._repo = repo
        self._repos = (repo, *more)
        self._parsed: dict[str, ParseResult] = {}
        self._namespaces: dict[tuple[str, str], _Namespace] = {}
        self._files_checked: dict[str, _FileResult] = {}  # by path: valid while the blob is the same
        self._prefetched: dict[str, bytes] = {}
        self._last_commit = ""
        self._last: tuple[DesiredState, list[_Entry]] | None = None  # the last state loaded, and its models/ entries
        self.stats = LoadStats()

    def load(self, commit: str) -> DesiredState:
        """The desired state at `commit` (a full SHA, or any revision GitPython resolves)."""
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
        checked = self._files_checked
        fresh = {k: [f.source(self) for f in files if getattr(checked.get(f.path), "blob", None) != f.blob]
                 for k, files in listed.items()}
        # One pipelined read for every new blob of every changed namespace.
        self._prefetch([f.blob for files in fresh.values() for f in files if f.blob not in self._parsed and not f.special])
        for cache_key, files in listed.items():
            results = _load_namespace(cache_key[0], fresh[cache_key], self._parse)
            by_path = {r.path: r for r in results}
            ordered = [by_path.get(f.path) or checked[f.path] for f in files]
            used[cache_key] = _assemble_namespace(ordered)
        # Keep only what the newest commit uses, so the caches never outgrow one repository.
        self._namespaces = used
        self._last = None
        self._files_checked = {r.path: r for n in used.values() for r in n.files}
        live_blobs = {r.blob for r in self._files_checked.values()}
        self._parsed = {sha: parsed for sha, parsed in self._parsed.items() if sha in live_blobs}
        self._prefetched.clear()
        state = _merge(self._last_commit, [used[k] for k in sorted(used)], problems, unreadable_namespaces, all_unreadable)
        self._last = (state, self._entries(models_tree)) if models_tree else None
        # What was just loaded lives until the next commit. Moving it out of the cyclic garbage
        # collector's generations keeps full collections from re-scanning it (with ten thousand
        # models they took 100-250 ms each); being acyclic, it is still freed by reference counting.
        gc.freeze()
        return state

    def load_edited(self, commit: str, parent: str, edits: Mapping[str, str | None]) -> DesiredState:
        """The desired state at `commit`, which is `parent` with only the files `edits` changed (path ->
        its new blob SHA, or None when removed), as a write made it.

        When the last load was of `parent` and every edit is a model file of a namespace folder already
        loaded, whose model no other file claims, the state is the last one with those files checked
        again: a write costs its own files, not the hundred thousand others of its namespace. Anything
        else (a new namespace, a duplicate, a commit that changed more) is a full `load`, with the
        same result."""
        last = self._last
        if last is None or last[0].commit != parent or not _FULL_SHA.match(commit):
            return self.load(commit)
        state, old_entries = last
        by_namespace: dict[str, dict[str, str | None]] = defaultdict(dict)
        for path, blob in edits.items():
            parts = path.split("/")
            if len(parts) != 3 or parts[0] != MODELS_DIR or not _is_model_file(parts[2]):
                return self.load(commit)
            by_namespace[parts[1]][path] = blob
        new_entries = self._models_entries(commit)
        old_trees = {e.name: e for e in old_entries}
        new_trees = {e.name: e for e in new_entries or ()}
        # Nothing but the edited namespaces' folders may differ under models/, and those were folders before.
        if new_entries is None or set(old_trees) != set(new_trees) or any(
                (old_trees[n] != new_trees[n]) != (n in by_namespace) for n in old_trees) or any(
                not old_trees[n].is_tree or not new_trees[n].is_tree for n in by_namespace):
            return self.load(commit)
        used = dict(self._namespaces)
        edited: list[tuple[tuple[_FileResult, ...], tuple[_FileResult, ...]]] = []
        for name, changed in by_namespace.items():
            old_key = (name, old_trees[name].binsha.hex())
            if old_key not in used:
                return self.load(commit)
            result = _edit_namespace(name, used[old_key], changed, self)
            if result is None:
                return self.load(commit)
            del used[old_key]
            used[(name, new_trees[name].binsha.hex())] = result[0]
            edited.append(result[1:])
        self.stats.loads += 1
        self._last_commit = commit
        self._namespaces = used
        for before, after in edited:  # the file cache follows (a parse no file uses any more goes at the next full load)
            for result in before:
                self._files_checked.pop(result.path, None)
            self._files_checked.update((r.path, r) for r in after)
        top = [p for p in state.problems if p.path.count("/") < 2]  # models/ itself and entries directly in it
        new_state = _merge(commit, [used[k] for k in sorted(used)], top, set(state.unreadable_namespaces),
                           state.all_unreadable)
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
        """`commit`, from the first repository that has it, which the rest of this load reads."""
        for repo in self._repos[:-1]:
            try:
                if _FULL_SHA.match(commit):
                    repo.odb.info(bytes.fromhex(commit))
                else:
                    repo.commit(commit)
            except (ValueError, git.exc.ODBError):
                continue
            break
        else:
            repo = self._repos[-1]  # the last one, or the only one, says what is wrong if it has not either
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
        """Read many blobs in one pipelined `git cat-file --batch`.

        GitPython's shared cat-file process answers one object per round trip; for a whole
        repository the round trips cost more than the parsing, so large reads go in one batch.
        """
        if len(blobs) < PREFETCH_THRESHOLD:
            return
        self._prefetched.update(read_blobs(self._repo.git_dir, blobs))

    def _read_blob(self, hexsha: str, binsha: bytes) -> bytes:
        content = self._prefetched.pop(hexsha, None)
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

    def load(self, commit: str) -> DesiredState:
        """The desired state at `commit` (see `GitLoader.load`)."""
        with self._lock:
            if self._last is not None and self._last.commit == commit:
                return self._last
            self._last = self._current().load(commit)
            return self._last

    def load_edited(self, commit: str, parent: str, edits: Mapping[str, str | None]) -> DesiredState:
        """The desired state at `commit`, `parent` with `edits` (see `GitLoader.load_edited`)."""
        with self._lock:
            if self._last is not None and self._last.commit == commit:
                return self._last
            self._last = self._current().load_edited(commit, parent, edits)
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
                blob=git.Blob.NULL_HEX_SHA,
                read=_file_reader(path),
                special=kind,
            )


def _load_namespace(
    namespace: str, files: Iterable[_SourceFile], parse: Callable[[_SourceFile], ParseResult]
) -> tuple[_FileResult, ...]:
    """Check and parse the model files under one namespace directory."""
    namespace_error = naming.dns1123_label_error(namespace)
    results = []
    for file in files:
        name = file.path.rpartition("/")[2]
        if file.special is not None and (file.path.count("/") != 2 or not _is_model_file(name)):
            problem = Problem(file.path, None, f"{file.special} is not allowed under {MODELS_DIR}/: only model files "
                                               "and namespace folders belong there; remove it")
            results.append(_FileResult(file.path, file.blob, None, None, (problem,)))
            continue
        if file.path.count("/") != 2:
            results.append(_FileResult(file.path, file.blob, None, None, (_too_deep(file.path),)))
            continue
        if namespace_error:
            problem = Problem(file.path, None, f"namespace directory '{namespace}' is not a valid namespace name: {namespace_error}")
            results.append(_FileResult(file.path, file.blob, None, None, (problem,)))
            continue
        claimed = ModelKey(namespace, name.rpartition(".")[0])
        if file.special is not None:
            plural = {kind: many for kind, many in _SPECIAL_KINDS.values()}.get(file.special, file.special)
            problem = Problem(file.path, None, f"model files must be regular files, not {plural}")
            results.append(_FileResult(file.path, file.blob, None, claimed, (problem,)))
            continue
        results.append(_check_file(file, claimed, parse(file)))
    return tuple(results)


def _check_file(file: _SourceFile, claimed: ModelKey, parsed: ParseResult) -> _FileResult:
    if not isinstance(parsed, ModelFields):
        problems = tuple(Problem(file.path, e.line, e.message) for e in parsed)
        return _FileResult(file.path, file.blob, None, claimed, problems)
    name = naming.resource_name(parsed.name, parsed.tag)
    name_error = naming.dns1123_subdomain_error(name)
    if name_error:
        message = f"model {parsed.reference} gives the resource name '{name}', which {name_error}"
        return _FileResult(file.path, file.blob, None, claimed, (Problem(file.path, None, message),))
    if name != claimed.name:
        suffix = file.path[file.path.rindex("."):]
        message = (
            f"file name does not match the model: {parsed.reference} must be in "
            f"'{claimed.namespace}/{name}{suffix}' (the name is <name>-<tag>, lowercased, "
            "with characters outside [a-z0-9.-] replaced by '-')"
        )
        return _FileResult(file.path, file.blob, None, claimed, (Problem(file.path, None, message),))
    model = DesiredModel(key=claimed, fields=parsed, path=file.path, blob=file.blob)
    return _FileResult(file.path, file.blob, model, claimed, ())


def _assemble_namespace(results: Iterable[_FileResult]) -> _Namespace:
    """The models of one namespace directory; files that claim the same model are all refused."""
    results = tuple(results)
    problems: list[Problem] = []
    by_key: dict[ModelKey, list[_FileResult]] = defaultdict(list)
    for result in results:
        problems.extend(result.problems)
        if result.claimed is not None:
            by_key[result.claimed].append(result)
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
        elif claims[0].model is not None:
            models[key] = claims[0].model
        else:
            unreadable.add(key)
    return _Namespace(models, tuple(problems), frozenset(unreadable), results)


def _edit_namespace(name: str, old: _Namespace, changed: Mapping[str, str | None], loader: GitLoader
                    ) -> tuple[_Namespace, tuple[_FileResult, ...], tuple[_FileResult, ...]] | None:
    """`old` with the files `changed` (path -> blob SHA, None: removed) checked again, with the results
    they had and have; None when a model they claim is claimed by another file too (a full assembly
    sorts that out)."""
    before = tuple(r for r in old.files if r.path in changed)
    fresh = [_Listed(path, blob, bytes.fromhex(blob), 0o100644).source(loader) for path, blob in changed.items() if blob]
    after = _load_namespace(name, fresh, loader._parse)
    claims = [r.claimed for r in (*before, *after) if r.claimed is not None]
    for key in set(claims):
        model = old.models.get(key)
        if sum(1 for r in after if r.claimed == key) > 1 or sum(1 for r in before if r.claimed == key) > 1 or \
                (model is not None and model.path not in changed) or \
                (model is None and key in old.unreadable and not any(r.claimed == key for r in before)):
            return None
    found = {r.model.key: r.model for r in after if r.model is not None}
    models = dict(old.models)
    unreadable = set(old.unreadable)
    for result in before:
        if result.claimed is not None:
            unreadable.discard(result.claimed)
            if result.claimed not in found:
                models.pop(result.claimed, None)
    unreadable.update(r.claimed for r in after if r.model is None and r.claimed is not None)
    new_keys = sorted(k for k in found if k not in models)
    models.update(found)  # a model already there keeps its place
    if new_keys:  # put in name order, as a full assembly makes it
        items, keys = list(models.items()), list(models)
        del items[-len(new_keys):], keys[-len(new_keys):]  # `update` put the new ones last
        for key in new_keys:
            at = bisect.bisect_left(keys, key)
            keys.insert(at, key)
            items.insert(at, (key, found[key]))
        models = dict(items)
    problems = tuple(p for p in old.problems if p.path not in changed) + tuple(p for r in after for p in r.problems)
    files = tuple(r for r in old.files if r.path not in changed) + after
    return _Namespace(models, problems, frozenset(unreadable), files), before, after


def _merge(commit: str | None, namespaces: list[_Namespace], problems: list[Problem],
           unreadable_namespaces: set[str], all_unreadable: bool) -> DesiredState:
    """Join namespaces (in name order, so models stay sorted) into one desired state."""
    # One namespace: its models are the state's (neither is changed once made), not a copy of them.
    models: dict[ModelKey, DesiredModel] = namespaces[0].models if len(namespaces) == 1 else {}
    unreadable: set[ModelKey] = set()
    for namespace in namespaces:
        if len(namespaces) > 1:
            models.update(namespace.models)
        unreadable.update(namespace.unreadable)
        problems.extend(namespace.problems)
    return DesiredState(commit=commit, models=models, problems=tuple(sorted(problems)), unreadable=frozenset(unreadable),
                        unreadable_namespaces=frozenset(unreadable_namespaces), all_unreadable=all_unreadable)


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


def read_blobs(git_dir: str | os.PathLike[str], blobs: list[str]) -> dict[str, bytes]:
    """The contents of many blobs, read in one `git cat-file --batch` call."""
    request = "".join(f"{sha}\n" for sha in blobs).encode()
    output = subprocess.run(["git", "--git-dir", os.fspath(git_dir), "cat-file", "--batch"],
                            input=request, capture_output=True, check=True).stdout
    contents: dict[str, bytes] = {}
    position = 0
    for _ in blobs:
        end = output.index(b"\n", position)
        header = output[position:end].split()
        position = end + 1
        if len(header) != 3:  # "<sha> missing": leave it to the one-by-one reader to report
            continue
        size = int(header[2])
        contents[header[0].decode()] = output[position:position + size]
        position += size + 1
    return contents


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
