"""Writing model files to the models repository: commits pushed to the tracked branch.

This is how the API changes desired state. Each change (add, delete, refresh a model) is checked
against the branch head, applied, committed and pushed, and acknowledged only once the push has
succeeded. Changes that arrive while a push is under way are combined into the next commit. When the
push is refused because the branch moved (a merged pull request, another API replica), the batch is
fetched, checked and applied again on the new head (a model created meanwhile is now a conflict),
with bounded retries and backoff; nothing half-done is ever acknowledged.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from io import BytesIO

import git
from gitdb.base import IStream

from .. import metrics
from ..models import modelfile, naming
from ..models.desired import MODELS_DIR, MODEL_SUFFIXES, special_kind
from .repo import BranchMissing, CheckedOutBranch, GitError, GitRepo
from ..models.modelfile import ModelFields

log = logging.getLogger("ollama_gitops.writer")

_AUTHOR = re.compile(r"^\s*(?P<name>[^<>]+?)\s*<(?P<email>[^<>\s]+)>\s*$")


class WriteRejected(Exception):
    """The change cannot be made; `status` is the HTTP status that says why (400, 404, 409, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CreateModel:
    namespace: str
    fields: ModelFields


@dataclass(frozen=True)
class DeleteModel:
    namespace: str
    name: str


@dataclass(frozen=True)
class RefreshModel:
    namespace: str
    name: str
    requested_at: str  # RFC 3339


Change = CreateModel | DeleteModel | RefreshModel


@dataclass(frozen=True)
class Written:
    """An acknowledged change: the pushed commit that carries it, and the model file's fields after it."""

    commit: str
    path: str
    fields: ModelFields | None  # None for a delete
    parent: str | None = None  # the commit it was made on
    # Every file the commit changed (this change's and its batch's), by path: the new blob SHA, None if removed.
    changes: Mapping[str, str | None] = field(default_factory=dict)


def parse_author(text: str) -> git.Actor:
    """`Name <email>` as a commit author; ValueError when it is not of that form."""
    match = _AUTHOR.match(text)
    if not match:
        raise ValueError(f"expected 'Name <email>', got {text!r}")
    return git.Actor(match["name"], match["email"])


class ModelWriter:
    """Applies changes to the branch through one worker thread that commits in batches."""

    def __init__(
        self,
        repo: GitRepo,
        author: git.Actor,
        *,
        attempts: int = 12,
        on_written: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.author = author
        self.attempts = attempts
        self._on_written = on_written
        self._handle: tuple[int, git.Repo] | None = None
        self._queue: queue.Queue[tuple[Change, Future[Written]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="model-writer", daemon=True)
        self._worker.start()

    @property
    def _git(self) -> git.Repo:
        # Its own handle on the clone: GitPython's object reader is one `git cat-file` pipe per
        # handle, and the API's request threads read through the other handle at the same time.
        # Opened again when the clone was repaired (a new directory under the same name).
        generation = self.repo.generation
        if self._handle is None or self._handle[0] != generation:
            if self._handle is not None:
                self._handle[1].close()
            self._handle = (generation, git.Repo(self.repo.repo.git_dir))
        return self._handle[1]

    def write(self, change: Change, timeout: float = 120.0) -> Written:
        """Make `change` and return once it is pushed; raises WriteRejected."""
        future: Future[Written] = Future()
        self._queue.put((change, future))
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise WriteRejected(503, f"the write did not finish within {timeout:.0f}s; it may still land") from None

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)
        if self._handle is not None and not self._worker.is_alive():
            self._handle[1].close()

    # -- the worker ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:  # everything that queued up while the last push ran goes in this commit
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self._commit_batch(batch)
            except Exception as exc:  # never leave a caller waiting on a bug
                log.exception("write batch failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(WriteRejected(503, f"internal error while writing: {exc}"))

    def _commit_batch(self, batch: list[tuple[Change, Future[Written]]]) -> None:
        delay = 0.05
        pushed: str | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                head = self.repo.head() if self.repo.has_fetched() else self.repo.fetch()
                results, edits = self._plan(head, [change for change, _ in batch])
                if not edits:
                    break
                done = [(change, r) for (change, _), r in zip(batch, results) if isinstance(r, Written)]
                commit, changes = self._make_commit(head, edits, _message(done))
                if self.repo.push(commit, expected=head):
                    results = [replace(r, commit=commit, parent=head, changes=changes) if isinstance(r, Written) else r
                               for r in results]
                    pushed = commit
                    log.info("action=pushed commit=%s changes=%d attempt=%d", commit[:12], len(edits), attempt)
                    break
                metrics.PUSH_RETRIES.inc()
                log.info("action=push-rejected attempt=%d; fetching and re-applying", attempt)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                self.repo.fetch()
            except BranchMissing as exc:
                results = [WriteRejected(503, f"{exc}: refusing to write, as the write would create the "
                                              "branch again from an old commit; restore the branch or "
                                              "choose another with --branch")] * len(batch)
                break
            except CheckedOutBranch as exc:  # not the branch moving: no retry can land it
                results = [WriteRejected(503, str(exc))] * len(batch)
                break
            except GitError as exc:
                results = [WriteRejected(503, f"the models repository is not available: {exc}")] * len(batch)
                break
        else:
            results = [WriteRejected(503, f"could not push after {self.attempts} attempts: the branch kept moving")] * len(batch)
        # Answer first: once pushed, a write is done, whatever fails after it.
        for (_, future), result in zip(batch, results):
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if pushed is not None and self._on_written is not None:
            try:
                self._on_written(pushed)
            except Exception:
                log.exception("action=after-push-failed commit=%s (the write is pushed and acknowledged)", pushed[:12])

    def _plan(self, head: str, changes: list[Change]) -> tuple[list[Written | WriteRejected], dict[str, bytes | None]]:
        """Check each change against `head` plus the changes before it; the edits to make, by path."""
        candidates = [f"{MODELS_DIR}/{c.namespace}/{_name_of(c)}{suffix}" for c in changes for suffix in MODEL_SUFFIXES]
        # The folders too: a write must never turn a linked or submodule namespace into a folder.
        folders = sorted({MODELS_DIR, *(f"{MODELS_DIR}/{c.namespace}" for c in changes)})
        # Apart: with a folder and a file in it asked at once, ls-tree lists the folder's every entry.
        folder_entries = _ls_tree(self.repo.run("ls-tree", "-z", head, "--", *folders, action="read the branch head"))
        file_entries = _ls_tree(self.repo.run("ls-tree", "-z", head, "--", *candidates, action="read the branch head"))
        blobs = {path: meta[2] for meta, path in file_entries}
        special = {path: kind for meta, path in folder_entries + file_entries
                   if (kind := special_kind(int(meta[0], 8)) or ("a file" if path in folders and meta[1] == "blob" else None))}
        files = _Files(self._git, blobs, special)
        results: list[Written | WriteRejected] = []
        for change in changes:
            try:
                results.append(_apply(change, files))
            except WriteRejected as rejected:
                results.append(rejected)
        return results, files.edits

    def _make_commit(self, head: str, edits: dict[str, bytes | None], message: str) -> tuple[str, dict[str, str | None]]:
        """A commit on `head` with `edits` made, built from the trees on the changed paths only, and
        the blob SHA of each edited path (None: removed).

        No index: reading the head's every entry into one (a hundred thousand for a big repository)
        cost more than the rest of a write. Each tree from the root down to a changed file is listed
        and written again with that entry replaced; every other tree is reused as it is."""
        odb = self._git.odb
        changes: dict[str, str | None] = {}
        for path, content in edits.items():
            changes[path] = None if content is None else \
                odb.store(IStream("blob", len(content), BytesIO(content))).hexsha.decode()
        tree = self._edit_tree(f"{head}^{{tree}}", "", changes) or \
            self.repo.run("mktree", "-z", action="write the tree", stdin=b"")  # every file deleted: the empty tree
        env = {"GIT_AUTHOR_NAME": self.author.name, "GIT_AUTHOR_EMAIL": self.author.email,
               "GIT_COMMITTER_NAME": self.author.name, "GIT_COMMITTER_EMAIL": self.author.email}
        commit = self.repo.run("commit-tree", tree, "-p", head, "-F", "-", action="commit", env=env,
                               stdin=message.encode())
        return commit, changes

    def _edit_tree(self, tree: str | None, prefix: str, changes: dict[str, str | None]) -> str | None:
        """The tree `tree` (None: there is none yet) with `changes` made, by path relative to it: a
        blob SHA to write there, or None to remove the file. None when nothing is left in it (Git
        keeps no empty folders, as a commit from an index would not)."""
        files: dict[str, str | None] = {}
        below: dict[str, dict[str, str | None]] = {}
        for path, blob in changes.items():
            name, slash, rest = path.partition("/")
            if slash:
                below.setdefault(name, {})[rest] = blob
            else:
                files[name] = blob
        lines = {name: f"100644 blob {blob}\t{name}" if blob else None for name, blob in files.items()}
        if below:
            # Only the folders' own entries: `ls-tree` with their names lists them, not the whole tree.
            folders = {path: meta for meta, path in _ls_tree(
                self.repo.run("ls-tree", "-z", tree, "--", *below, action="read the branch head"))} if tree else {}
            for name, sub in below.items():
                entry = folders.get(name)
                if entry is not None and entry[1] != "tree":
                    # A model write never replaces what it was not asked to (nor can a file hold files).
                    raise WriteRejected(409, f"{prefix}{name} is a file, not a folder; make it a folder again in Git "
                                             "before changing its models here")
                subtree = self._edit_tree(entry[2] if entry else None, f"{prefix}{name}/", sub)
                lines[name] = f"040000 tree {subtree}\t{name}" if subtree else None
        added = [f"{line}\0".encode() for line in lines.values() if line]
        # mktree sorts the entries as Git orders them; --missing skips looking up every unchanged one.
        if tree is None:
            return self.repo.run("mktree", "-z", "--missing", action="write a tree", stdin=b"".join(added)) if added else None
        # The tree's listing streams from ls-tree to mktree with those lines taken out and put in: a
        # folder of 100,000 files lists ~7 MB, which a write never holds.
        splice = _Splice(lines, added)
        made = self.repo.run_piped(["ls-tree", "-z", tree], ["mktree", "-z", "--missing"], splice, action="write a tree")
        return made if splice.kept else None


def _ls_tree(listing: str) -> list[tuple[list[str], str]]:
    """`git ls-tree -z` output as ([mode, type, SHA], path) pairs."""
    return [(meta.split(), path) for meta, _, path in (e.partition("\t") for e in listing.split("\0") if e)]


def _entry_span(listing: bytes, name: str) -> tuple[int, int] | None:
    """Where `name`'s line is in `git ls-tree -z` output (`<mode> <type> <sha>TAB<name>NUL`, repeated)."""
    needle = f"\t{name}\0".encode()
    at = listing.find(needle)
    while at >= 0:
        start = listing.rfind(b"\0", 0, at) + 1
        if b"\t" not in listing[start:at]:  # not the tail of another name that holds a tab
            return start, at + len(needle)
        at = listing.find(needle, at + 1)
    return None


class _Splice:
    """`git ls-tree -z` output as it streams by, without the lines of the names `removed` and with the
    lines `added` after it (mktree sorts them): each read is cut after its last entry, and only the
    parts between removed lines are passed on. `kept` says whether any line was."""

    def __init__(self, removed: Iterable[str], added: list[bytes]) -> None:
        self._removed = set(removed)
        self._added = added
        self.kept = bool(added)

    def __call__(self, reads: Iterable[bytes]) -> Iterator[bytes]:
        tail = b""
        for read in reads:
            data = tail + read if tail else read
            cut = data.rfind(b"\0") + 1
            tail = data[cut:]
            yield from self._without(data[:cut] if tail else data)
        yield from self._without(tail)
        yield from self._added

    def _without(self, entries: bytes) -> Iterator[bytes]:
        spans = []
        for name in list(self._removed):
            span = _entry_span(entries, name)
            if span is not None:
                spans.append(span)
                self._removed.discard(name)
        at = 0
        for start, end in sorted(spans):
            if start > at:
                self.kept = True
                yield entries[at:start]
            at = end
        if at < len(entries):
            self.kept = True
            yield entries[at:] if at else entries


def bump_refresh(content: bytes, requested_at: str) -> bytes:
    """The file with `refreshRequestedAt` set, keeping everything else as written (comments too)."""
    text = content.decode("utf-8")
    line = f'refreshRequestedAt: "{requested_at}"'
    pattern = re.compile(r"^refreshRequestedAt:.*$", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(line, text, count=1)
    else:
        text = text if text.endswith("\n") or not text else text + "\n"
        text += line + "\n"
    return text.encode("utf-8")


class _Files:
    """The model files of the branch head that a batch touches, with the batch's edits on top."""

    def __init__(self, repo: git.Repo, blobs: dict[str, str], special: dict[str, str]) -> None:
        self._repo = repo
        self._blobs = blobs
        self._special = special  # entries that are neither folders nor regular files, by path
        self.edits: dict[str, bytes | None] = {}

    def refuse_special(self, namespace: str, path: str | None) -> None:
        """Refuse (409) a change through `models/`, the namespace folder or the file when one of them
        is a symbolic link or submodule: the reconciler keeps their models as they were, and a
        write would replace what it cannot see."""
        for where in (MODELS_DIR, f"{MODELS_DIR}/{namespace}", path):
            kind = self._special.get(where) if where is not None else None
            if kind is not None:
                raise WriteRejected(409, f"{where} is {kind}, not a {'file' if where == path else 'folder'}; "
                                         "make it one again in Git before changing its models here")

    def find(self, namespace: str, name: str) -> str | None:
        for suffix in MODEL_SUFFIXES:
            path = f"{MODELS_DIR}/{namespace}/{name}{suffix}"
            if path in self.edits:
                if self.edits[path] is not None:
                    return path
            elif path in self._blobs:
                return path
        return None

    def read(self, path: str) -> bytes:
        content = self.edits.get(path)
        if content is not None:
            return content
        return self._repo.odb.stream(bytes.fromhex(self._blobs[path])).read()


def _apply(change: Change, files: _Files) -> Written:
    if isinstance(change, CreateModel):
        name = _name_of(change)
        files.refuse_special(change.namespace, None)
        if files.find(change.namespace, name) is not None:
            raise WriteRejected(409, f"model already exists: {name}")
        path = f"{MODELS_DIR}/{change.namespace}/{name}.yaml"
        files.edits[path] = modelfile.render(change.fields)
        return Written("", path, change.fields)
    files.refuse_special(change.namespace, None)
    path = files.find(change.namespace, change.name)
    if path is None:
        raise WriteRejected(404, f"model not found: {change.name}")
    files.refuse_special(change.namespace, path)
    content = files.read(path)
    current = modelfile.parse(content)
    if isinstance(change, DeleteModel):
        files.edits[path] = None
        return Written("", path, current if isinstance(current, ModelFields) else None)
    if not isinstance(current, ModelFields):
        detail = "; ".join(e.message for e in current)
        raise WriteRejected(409, f"model file {path} is invalid; fix it before refreshing: {detail}")
    updated = bump_refresh(content, change.requested_at)
    fields = modelfile.parse(updated)
    assert isinstance(fields, ModelFields), "setting a valid timestamp keeps a valid file valid"
    files.edits[path] = updated
    return Written("", path, fields)


def _name_of(change: Change) -> str:
    if isinstance(change, CreateModel):
        return naming.resource_name(change.fields.name, change.fields.tag)
    return change.name


def _describe(change: Change, written: Written) -> str:
    verb = {CreateModel: "Add", DeleteModel: "Delete", RefreshModel: "Refresh"}[type(change)]
    what = written.fields.reference if written.fields else f"{change.namespace}/{_name_of(change)}"
    return f"{verb} model {what}"


def _message(done: list[tuple[Change, Written]]) -> str:
    lines = [_describe(change, written) for change, written in done]
    if len(lines) == 1:
        return lines[0] + "\n"
    subject = f"{lines[0]} and {len(lines) - 1} more change{'s' if len(lines) > 2 else ''}"
    return subject + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
