"""The API's side of the models repository: a clone it writes through, and the desired state at the
newest commit it knows (fetched on a schedule, and after each of its own pushes)."""

from __future__ import annotations

import logging
import threading

from ..reconciler.models.desired import DesiredState, GitLoader, LoadStats, SharedLoader
from ..reconciler.git.repo import GitError, GitRepo
from ..reconciler.git.writer import Change, ModelWriter, Written

log = logging.getLogger("ollama_gitops.api.repository")


class ModelsRepository:
    """Desired state for reads, and writes that become commits."""

    def __init__(self, repo: GitRepo, writer: ModelWriter, loader: SharedLoader | None = None) -> None:
        """`loader`: one shared with the reconciler (`serve`), which loads each commit once for both;
        without it, a loader of this clone's own."""
        self.repo = repo
        self.writer = writer
        self._loader: GitLoader | SharedLoader = loader if loader is not None else GitLoader(repo.repo)
        self._loader_generation = repo.generation
        self._lock = threading.Lock()  # `_desired` follows the head one load at a time
        self._desired: DesiredState | None = None
        self.last_error: str | None = None

    @property
    def loader_stats(self) -> LoadStats:
        """How much work loads of the desired state did (for tests and benchmarks)."""
        return self._loader.stats

    @property
    def desired(self) -> DesiredState | None:
        """The desired state at the newest known commit; None until the first fetch succeeded."""
        return self._desired

    def refresh(self) -> None:
        """Fetch the branch and load its head if it moved. Keeps the last state when Git is down."""
        try:
            self.repo.fetch()
        except GitError as exc:
            self.last_error = str(exc)
            log.warning("action=fetch-failed error=%r", str(exc))
            return
        self.last_error = None
        self._load()

    def close(self) -> None:
        """Finish the writes under way, then let go of the clone."""
        self.writer.close()
        self.repo.close()

    def write(self, change: Change) -> Written:
        """Make a change (raises WriteRejected); reads see it as soon as this returns.

        Once pushed, the change is done: a failure to load the new head is logged, never raised (reads
        show the change at the next refresh instead)."""
        written = self.writer.write(change)
        try:
            self._load(written)
        except Exception:
            log.exception("action=reload-failed commit=%s (the write is pushed; reads catch up at the next fetch)",
                          written.commit[:12])
        return written

    def load(self, commit: str) -> DesiredState:
        """The desired state at any fetched `commit` (for a plan preview), through the same loader
        and its caches; what reads show is left as it is."""
        with self._lock:
            if self._desired is not None and self._desired.commit == commit:
                return self._desired
            return self._current_loader().load(commit)

    def _current_loader(self) -> GitLoader | SharedLoader:
        if isinstance(self._loader, SharedLoader):  # it follows the clones' generations itself
            return self._loader
        if self._loader_generation != self.repo.generation:  # the clone was set aside and made again
            self._loader, self._loader_generation = GitLoader(self.repo.repo), self.repo.generation
        return self._loader

    def _load(self, written: Written | None = None) -> None:
        # Load what the tracking ref says now, not a commit a caller saw: a fetch that finished
        # just before another thread's push must not bring back the older commit.
        with self._lock:
            head = self.repo.head()
            if self._desired is not None and self._desired.commit == head:
                return
            loader = self._current_loader()
            # With serve's shared loader, read from this clone: the reconciler's may be fetching the
            # same commit right now, and have it before its trees.
            source = {"source": self.repo} if isinstance(loader, SharedLoader) else {}
            if written is not None and written.commit == head and written.parent is not None and \
                    self._desired is not None and self._desired.commit == written.parent:
                # Our own write on the state we hold: check its files, not the namespace's every one.
                self._desired = loader.load_edited(head, written.parent, written.changes, **source)
            else:
                self._desired = loader.load(head, **source)
