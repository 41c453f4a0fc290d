"""A list-and-watch cache of the managed `OllamaModel` resources, in the manner of client-go's informer.

One daemon thread lists every resource carrying ollama-gitops's managed-by label (all namespaces),
then watches from the list's ``resourceVersion``. The reconciler reads the cache instead of
listing on every cycle, so a quiet cluster costs one open watch and no lists at all.

The watch is resumed, not restarted: when it ends normally (``timeoutSeconds``) it is opened again
from the last version seen, bookmarks included, so no event is lost and nothing is listed again.
Only when the server has forgotten that version (410 Gone) is the cache rebuilt from a new list;
any other failure waits ``retry_delay`` and lists again, since events may have been missed.

The product's own writes do not count as changes (they would wake a cycle for nothing, each costing
a ``git fetch``): a write made inside `ResourceCache.own_write` puts its answer into the cache at
once and the watch event carrying the answer's ``resourceVersion`` is then taken as its echo.
resourceVersions are opaque: they are only compared for equality, and the watch stream's order is
the only order relied on (see `_Writes`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from ..models.desired import ModelKey
from .resources import GROUP, MANAGED_SELECTOR, PLURAL, VERSION, Resource

__all__ = ["CacheStats", "Gone", "LiveWatch", "ResourceCache"]

log = logging.getLogger("ollama_gitops.cluster.cache")

GONE = 410
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server
LIST_READ_TIMEOUT = 60.0  # a list that sends nothing for this long is given up (then retried)
WATCH_READ_MARGIN = 30.0  # beyond timeoutSeconds: only a dead connection stays silent this long
STOP_POLL = 0.05  # how often stop() repeats Watch.stop() while the thread has not ended


class Gone(Exception):
    """The watch's resourceVersion is older than the server's history: only a new list helps."""


class LiveWatch:
    """The one watch request a thread has open, so that another thread can end it (`stop_watch_thread`)."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None

    def current(self) -> watch.Watch | None:
        with self._lock:
            return self._watch

    def events(self, method: Callable[..., Any], *args: Any, resource_version: str, timeout: int,
               **kwargs: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """The (type, raw object) events of one watch request from `resource_version`, bookmarks
        included, until the server ends it after `timeout` seconds or the thread is stopping.
        `Gone` when the version has expired (410, as an ERROR event or an HTTP answer). Use it in a
        `with closing(...)` or a plain for loop, so that the response is closed when left early.
        `method` is the API's list method; its events are decoded once, into plain dicts (`_untyped`)."""
        w = watch.Watch()
        with self._lock:
            if self._stopping.is_set():
                return
            self._watch = w
        # timeout_seconds also keeps the client from retrying a 410 itself: it raises at once.
        stream = w.stream(_untyped(method), *args, **kwargs, resource_version=resource_version,
                          allow_watch_bookmarks=True, timeout_seconds=timeout,
                          _request_timeout=(CONNECT_TIMEOUT, timeout + WATCH_READ_MARGIN))
        try:
            for event in stream:
                if self._stopping.is_set():
                    break
                yield event["type"], event["raw_object"]
        except ApiException as error:
            if error.status == GONE:
                raise Gone(error.reason) from error
            raise
        finally:
            with self._lock:
                self._watch = None
            stream.close()  # when we left the loop early: runs the client's cleanup (closes the response)


def _untyped(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` without its docstring's return type. Given an API method itself, `Watch.stream` turns
    each event's object into that type: a typed one into a model, most of a watch's cost; a custom
    object ("object") by encoding the decoded object to JSON and decoding that again (a cold start
    of N models brings 2N events, and that was a tenth of the product's CPU). Without a type, as
    `Watch.stream` documents, `object` is `raw_object`: each line is decoded once. ERROR events are
    raised as before."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)
    return call


@dataclass
class CacheStats:
    """Counters, for tests and metrics (written by the cache thread only)."""

    lists: int = 0  # list requests started (the first one, relists after 410 and after errors)
    watches: int = 0  # watch requests started
    events: int = 0  # watch events received, bookmarks included
    relists_after_gone: int = 0  # relists because the watch's version had expired (410)
    errors: int = 0  # failed lists or watches other than 410 (each followed by retry_delay)


@dataclass
class _Writes:
    """The product's own writes to one resource, as far as the watch has not caught up with them.

    ``in_flight`` writes are sent and not answered; ``noted`` counts answers taken in so far (a
    write whose answer comes while no other answer came since it was sent is newer than all of
    those). ``ahead`` is the version of an answer put into the cache before the watch brought it;
    ``own`` the versions answered to our writes that the watch has not brought yet; ``unclaimed``
    the versions the watch brought while writes were in flight, not yet known to be ours.
    """

    in_flight: int = 0
    noted: int = 0
    ahead: str | None = None
    own: set[str] = field(default_factory=set)
    unclaimed: set[str] = field(default_factory=set)

    @property
    def idle(self) -> bool:
        return not self.in_flight and self.ahead is None and not self.own and not self.unclaimed


class ResourceCache:
    """The managed `OllamaModel` resources of the whole cluster, kept current by a watch.

    :param api: the client to list and watch with.
    :param watch_timeout: ``timeoutSeconds`` of each watch request; the watch is then resumed
        from the last version seen, without a list.
    :param on_change: called from the cache thread, outside the lock, with the keys whose
        content changed (added, modified, deleted) after each batch: the first list (always, even
        when empty, so it also tells that the cache is synced), each relist and each watch event
        that changed something. It should only note the keys or request a cycle; exceptions it
        raises are logged and otherwise ignored.
    :param retry_delay: seconds to wait after a failed list or watch before listing again.
    """

    def __init__(self, api: kubernetes.client.CustomObjectsApi, *, watch_timeout: int = 300,
                 on_change: Callable[[set[ModelKey]], None] | None = None, retry_delay: float = 1.0) -> None:
        self._api = api
        self._watch_timeout = int(watch_timeout)
        self._on_change = on_change
        self._retry_delay = retry_delay
        self.stats = CacheStats()

        self._lock = threading.Lock()  # guards _items, _changed and _writes
        self._items: dict[ModelKey, Resource] = {}
        self._changed: set[ModelKey] = set()
        self._writes: dict[ModelKey, _Writes] = {}

        self._resource_version = ""  # last version seen by the cache thread (its own state, no lock)
        self._synced = threading.Event()
        self._stopping = threading.Event()  # also what retry waits on, so stop() cuts them short
        self._live = LiveWatch(self._stopping)  # for stop() to end it
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ResourceCache:
        """Start the background thread (list, then watch). Returns self; a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ollama-gitops-cache", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread and wait (at most `timeout` seconds) for it to finish: `Watch.stop` shuts
        the live watch's socket down, which wakes a read blocked on it (see `stop_watch_thread`)."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return
        if not stop_watch_thread(thread, self._live.current, timeout):
            log.warning("resource cache thread still running %.1f s after stop()", timeout)

    @property
    def running(self) -> bool:
        """True while the cache thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def synced(self) -> bool:
        """True once the first list has been taken in."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for the first list; True once it has been taken in."""
        return self._synced.wait(timeout)

    # -- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[ModelKey, Resource]:
        """Every cached resource: a shallow copy (resources are immutable), safe while events arrive."""
        with self._lock:
            return dict(self._items)

    def get(self, key: ModelKey) -> Resource | None:
        """The cached resource `key`, or None."""
        with self._lock:
            return self._items.get(key)

    def take_changed(self) -> set[ModelKey]:
        """The keys changed (added, modified or deleted) since the last call; the record is cleared."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    @contextmanager
    def own_write(self, key: ModelKey) -> Iterator[Callable[[Mapping[str, Any]], None]]:
        """Around one of the product's own writes to resource `key`; call what it yields with the
        server's answer (the object written).

        The answer goes into the cache at once, so the next cycle plans from what was written and
        not from a cache the watch has not caught up with, and the watch event carrying the same
        version is not reported as a change: the product's own writes do not wake it. An event that
        arrives while the write is in flight is held back until the write is answered: it is
        reported then unless it was the write's own. A ``Status`` answer (a delete without
        finalizers) is no object: the watch's DELETED event is then reported as any other. Do not
        pass the answers of dry-run writes.
        """
        with self._lock:
            writes = self._writes.setdefault(key, _Writes())
            writes.in_flight += 1
            noted_before = writes.noted
        answered: list[Mapping[str, Any]] = []
        try:
            yield answered.append
        finally:
            with self._lock:  # `writes` stays in _writes while a write is in flight
                writes.in_flight -= 1
                gone = False
                for obj in answered:
                    gone |= self._note(key, writes, obj, first=writes.noted == noted_before)
                    writes.noted += 1
                held = set() if writes.in_flight else writes.unclaimed
                if not writes.in_flight:
                    writes.unclaimed = set()
                if writes.idle and self._writes.get(key) is writes:
                    del self._writes[key]
                if held or gone:
                    self._changed.add(key)
            if held or gone:  # changes by others that came in while our writes were in flight
                self._notify({key})

    def observe_write(self, obj: Mapping[str, Any]) -> None:
        """Take in the answer of a write made without `own_write` (as if made inside it)."""
        name = (obj.get("metadata") or {}).get("name")
        if obj.get("kind") == "Status" or not name:
            return
        with self.own_write(Resource.from_object(obj).key) as noted:
            noted(obj)

    def _note(self, key: ModelKey, writes: _Writes, obj: Mapping[str, Any], first: bool) -> bool:
        """Take in one answer (under the lock); True when it says the resource is gone."""
        if obj.get("kind") == "Status" or not (obj.get("metadata") or {}).get("name"):
            return False
        resource = Resource.from_object(obj)
        version = resource.resource_version
        if version in writes.unclaimed:  # the watch brought it already (and maybe later ones): ours
            writes.unclaimed.discard(version)
            return False
        if resource.deleting and not resource.finalizers:
            # The write released the last finalizer: the server has deleted it. Reported as the
            # DELETED event would be (a cycle may have to create it again); that event then finds
            # nothing left to change.
            return self._items.pop(key, None) is not None
        current = self._items.get(key)
        if current is not None and current.resource_version == version:
            # A write that changed nothing (answered with the version the cache holds): no event
            # will carry it. (Were it someone else's write that the watch has not brought yet, its
            # content is in the cache already; only its wake-up is lost.)
            return False
        writes.own.add(version)
        if not first:
            return False  # answered after another answer to a write sent at the same time: order unknown
        # Newer than everything the cache holds: the watch has not brought it, and the stream's
        # order puts every event it brought for this resource before it.
        writes.ahead = version
        if resource.managed:
            self._items[key] = resource
        else:  # the write released it: it is no longer ours to hold
            self._items.pop(key, None)
        return False

    # -- the cache thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._list()
                while not self._stopping.is_set():
                    self._watch_once()  # returns when the watch ends normally: resume it, no list
            except Gone as gone:
                if self._stopping.is_set():
                    break
                # The server no longer has the events after our version: list again at once.
                self.stats.relists_after_gone += 1
                log.info("watch of %s expired (%s); listing again", PLURAL, gone)
            except Exception as error:  # connection refused, 5xx, broken stream: list again after a pause
                if self._stopping.is_set():
                    break  # stop() shutting the socket down surfaces as an error: not one to report
                self.stats.errors += 1
                log.warning("list/watch of %s failed (%s); listing again in %.1f s",
                            PLURAL, describe_error(error), self._retry_delay)
                self._stopping.wait(self._retry_delay)
        log.debug("resource cache stopped")

    def _list(self) -> None:
        """Replace the cache by a list, reporting the keys whose content differs."""
        self.stats.lists += 1
        answer = self._api.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=MANAGED_SELECTOR,
            _request_timeout=(CONNECT_TIMEOUT, LIST_READ_TIMEOUT))
        list_version = str((answer.get("metadata") or {}).get("resourceVersion", ""))
        listed: dict[ModelKey, Resource] = {}
        for obj in answer.get("items") or ():
            resource = Resource.from_object(obj)
            if resource.managed:  # the selector already says so; be sure anyway
                listed[resource.key] = resource
        with self._lock:
            # The list is the truth: answers put in ahead of the watch may be older or newer than it
            # (versions cannot be ordered), so they are forgotten; writes still in flight go on.
            for key, writes in list(self._writes.items()):
                writes.ahead, writes.own = None, set()
                if writes.idle:
                    del self._writes[key]
            changed = self._items.keys() - listed.keys()  # deleted while nothing watched
            changed |= {key for key, r in listed.items()
                        if key not in self._items or self._items[key].resource_version != r.resource_version}
            self._items = listed
            self._changed |= changed
        self._resource_version = list_version
        first = not self._synced.is_set()
        self._synced.set()
        log.debug("listed %d %s at version %s (%d changed)", len(listed), PLURAL, list_version, len(changed))
        if changed or first:
            self._notify(changed)

    def _watch_once(self) -> None:
        """Watch from the last version seen until the server ends the watch (or stop())."""
        self.stats.watches += 1
        with closing(self._live.events(self._api.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                       label_selector=MANAGED_SELECTOR, resource_version=self._resource_version,
                                       timeout=self._watch_timeout)) as events:
            for kind, obj in events:
                self.stats.events += 1
                self._handle(kind, obj)

    def _handle(self, kind: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion", ""))
        if kind == "ERROR":  # the client raises these itself; kept in case a client version does not
            code = obj.get("code")
            if code == GONE:
                raise Gone(obj.get("message", ""))
            raise ApiException(status=code, reason=f"{obj.get('reason')}: {obj.get('message')}")
        if version:
            self._resource_version = version  # bookmarks too: resuming from them skips nothing
        if kind == "BOOKMARK":
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.debug("ignoring watch event of type %r", kind)
            return
        resource = Resource.from_object(obj)
        with self._lock:
            current = self._items.get(resource.key)
            writes = self._writes.get(resource.key)
            if writes is not None and kind == "DELETED":
                # Gone, whoever's write it was (releasing the last finalizer deletes it): always
                # reported, so a cycle can create it again if its file is still in Git.
                writes.ahead, writes.own = None, set()
                writes.unclaimed.discard(version)
                if writes.idle:
                    del self._writes[resource.key]
                notify = self._store_event(kind, resource, current)
            elif writes is not None:
                if version in writes.own:  # the echo of a write of ours
                    writes.own.discard(version)
                    if writes.ahead == version:
                        writes.ahead = None  # the cache holds it already
                    elif writes.ahead is None:  # not put in ahead (order unknown then): take it now
                        self._store_event(kind, resource, current)
                    if writes.idle:
                        del self._writes[resource.key]
                    return
                if writes.ahead is not None:
                    # Before our answer in the stream: someone else's change, which the cached
                    # answer already includes. Report it; keep the newer content.
                    notify = True
                elif writes.in_flight:  # ours or not: known when the write is answered
                    self._store_event(kind, resource, current)
                    writes.unclaimed.add(version)
                    return
                else:
                    notify = self._store_event(kind, resource, current)
            else:
                notify = self._store_event(kind, resource, current)
            if notify:
                self._changed.add(resource.key)
        if notify:
            self._notify({resource.key})

    def _store_event(self, kind: str, resource: Resource, current: Resource | None) -> bool:
        """Apply a watch event to the cache (under the lock); True if it changed anything."""
        if kind in ("ADDED", "MODIFIED") and resource.managed:
            if current is not None and current.resource_version == resource.resource_version:
                return False  # nothing new
            self._items[resource.key] = resource
            return True
        # DELETED, or without the label it has left the selector (the server sends DELETED for
        # that itself; this is only defensive): it is no longer ours to hold.
        if current is None:
            return False
        del self._items[resource.key]
        return True

    def _notify(self, keys: set[ModelKey]) -> None:
        # Called without the lock held, so the callback may read the cache.
        if self._on_change is None:
            return
        try:
            self._on_change(set(keys))
        except Exception:  # a faulty callback must not end the watch (or trigger a relist)
            log.exception("resource cache on_change callback failed")


def stop_watch_thread(thread: threading.Thread, current: Callable[[], watch.Watch | None], timeout: float) -> bool:
    """Stop the watch `current()` returns until `thread` ends (at most `timeout` seconds); False if
    it is still running. Repeated, because a watch may be between being made and having its
    response: then a stop has nothing to shut down yet, and `Watch.stream` even clears the flag."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        live = current()
        if live is not None:
            live.stop()
        thread.join(STOP_POLL)
    return not thread.is_alive()


def describe_error(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
