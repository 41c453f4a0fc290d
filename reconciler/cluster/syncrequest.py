"""Asking the reconciler for a cycle from another process, the way Flux's
`reconcile.fluxcd.io/requestedAt` annotation does.

In a cluster the API and the reconciler are separate Deployments. The API, on an accepted webhook
push, sets the annotation `ollama.smithforge.dev/sync-requested-at` (an RFC 3339 time with
milliseconds) on the ConfigMap `ollama-gitops-sync` in the leader-election namespace; the
reconciler watches that one ConfigMap and requests a cycle whenever the annotation takes a new
value, when it holds the Lease (a standby ignores it: it runs a cycle anyway when it takes over).

So the API needs a single permission to trigger cycles: `patch` on configmaps with resourceNames
`[ollama-gitops-sync]`; it cannot create, read or change anything else. The reconciler creates the
ConfigMap when it starts, and again if someone deletes it.

Requests coalesce on their own: several annotations set during one cycle each call
`request_cycle()`, which makes the running cycle loop once more, not once per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import kubernetes.client
import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from .cache import CONNECT_TIMEOUT, GONE, WATCH_READ_MARGIN, describe_error, stop_watch_thread

__all__ = ["ANNOTATION", "CONFIG_MAP", "SyncRequestUnavailable", "SyncRequestWatcher", "request_sync"]

log = logging.getLogger("ollama_gitops.cluster.syncrequest")

CONFIG_MAP = "ollama-gitops-sync"
ANNOTATION = "ollama.smithforge.dev/sync-requested-at"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 10.0  # seconds: a webhook's answer waits for the patch


class SyncRequestUnavailable(Exception):
    """The request could not be recorded; the message says why (for the webhook's 503)."""


def request_sync(api: kubernetes.client.ApiClient, namespace: str, at: datetime | None = None) -> str:
    """Ask the reconciler for a cycle: set the annotation on the ConfigMap to `at` (default now).
    Returns the value set. A merge patch, so replicas of the API never conflict: the last one wins,
    and any new value wakes the reconciler."""
    value = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="milliseconds")
    value = value.replace("+00:00", "Z")
    core = kubernetes.client.CoreV1Api(api)
    try:
        core.patch_namespaced_config_map(CONFIG_MAP, namespace, {"metadata": {"annotations": {ANNOTATION: value}}},
                                         _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            raise SyncRequestUnavailable(
                f"the ConfigMap {namespace}/{CONFIG_MAP} does not exist: the reconciler creates it when it "
                f"starts; is `ollama-gitops reconcile` running with --leader-election-namespace {namespace}?") from None
        raise SyncRequestUnavailable(f"could not annotate the ConfigMap {namespace}/{CONFIG_MAP}: "
                                     f"HTTP {exc.status} {exc.reason}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise SyncRequestUnavailable(f"the Kubernetes API is not reachable: {exc}") from None
    return value


class _Restart(Exception):
    """List again: the watch's version expired (410), or the ConfigMap went away."""


class SyncRequestWatcher:
    """Creates the ConfigMap if it is missing, then watches it (one object: a field selector on its
    name) and calls `on_request` each time the annotation takes a new value while `leading()`.

    Like the resource cache: list, then watch from the list's version, resumed after a normal end;
    a 410 lists again at once, any other failure after `retry_delay`. A value changed while nothing
    watched is seen in the next list, and counts as a request.
    """

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, on_request: Callable[[], None], *,
                 leading: Callable[[], bool] = lambda: True, watch_timeout: int = 300,
                 retry_delay: float = 5.0) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._namespace = namespace
        self._on_request = on_request
        self._leading = leading
        self._watch_timeout = int(watch_timeout)
        self._retry_delay = retry_delay
        self._seen: str | None = None  # the annotation's last value seen (None: none yet)
        self._version = ""
        self._listed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0  # requests passed on to on_request (for tests and logs)

    def start(self) -> SyncRequestWatcher:
        """Start the watching thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ollama-gitops-sync-requests", daemon=True)
            self._thread.start()
        return self

    @property
    def last_seen(self) -> str | None:
        """The annotation's value last seen (a request, or the baseline found at start)."""
        return self._seen

    def wait_listed(self, timeout: float) -> bool:
        """Wait for the first list (the ConfigMap exists from then on); True once it happened."""
        return self._listed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread: `Watch.stop` until it notices (`stop_watch_thread`)."""
        self._stopping.set()
        if self._thread is not None:
            stop_watch_thread(self._thread, self._current_watch, timeout)

    def _current_watch(self) -> watch.Watch | None:
        with self._lock:
            return self._watch

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._ensure()
                self._list()
                while not self._stopping.is_set():
                    self._watch_once()
            except _Restart as why:
                log.info("sync request watch: %s; listing again", why)
            except Exception as error:  # refused, 5xx, broken stream: a pause, then again
                if self._stopping.is_set():
                    break
                log.warning("sync request watch of %s/%s failed (%s); again in %.0f s", self._namespace,
                            CONFIG_MAP, describe_error(error), self._retry_delay)
                self._stopping.wait(self._retry_delay)

    def _ensure(self) -> None:
        body = {"metadata": {"name": CONFIG_MAP, "labels": {"app.kubernetes.io/managed-by": "ollama-gitops"}}}
        try:
            self._core.create_namespaced_config_map(self._namespace, body, _request_timeout=REQUEST_TIMEOUT)
            log.info("created the ConfigMap %s/%s that webhooks annotate to request a cycle", self._namespace,
                     CONFIG_MAP)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists is the usual case
                raise

    def _list(self) -> None:
        answer = self._core.list_namespaced_config_map(
            self._namespace, field_selector=f"metadata.name={CONFIG_MAP}",
            _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT))
        self._version = answer.metadata.resource_version or ""
        if not answer.items:
            raise _Restart("the ConfigMap is gone")
        self._observe(answer.items[0].metadata.annotations)
        self._listed.set()

    def _watch_once(self) -> None:
        w = watch.Watch()
        with self._lock:
            if self._stopping.is_set():
                return
            self._watch = w
        stream = w.stream(self._core.list_namespaced_config_map, self._namespace,
                          field_selector=f"metadata.name={CONFIG_MAP}", resource_version=self._version,
                          allow_watch_bookmarks=True, timeout_seconds=self._watch_timeout,
                          _request_timeout=(CONNECT_TIMEOUT, self._watch_timeout + WATCH_READ_MARGIN))
        try:
            for event in stream:
                if self._stopping.is_set():
                    break
                obj = event["raw_object"]
                kind = event["type"]
                if kind == "ERROR":
                    raise _Restart(f"watch error {obj.get('code')}: {obj.get('message')}")
                self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
                if kind == "DELETED":
                    raise _Restart("the ConfigMap was deleted")
                if kind in ("ADDED", "MODIFIED"):
                    self._observe((obj.get("metadata") or {}).get("annotations"))
        except ApiException as error:
            if error.status == GONE:
                raise _Restart("the watch's version expired") from error
            raise
        finally:
            with self._lock:
                self._watch = None
            stream.close()

    def _observe(self, annotations: Mapping[str, str] | None) -> None:
        value = (annotations or {}).get(ANNOTATION)
        if not value or value == self._seen:
            return  # no request, or one already seen (a relist, or a change to something else)
        # The value found by the very first list is the baseline: the first cycle runs anyway.
        baseline = not self._listed.is_set() and self._seen is None
        self._seen = value
        if not baseline:
            self._request(value)

    def _request(self, value: str) -> None:
        if not self._leading():
            log.debug("sync requested at %s: not leading, ignored", value)
            return
        self.requests += 1
        log.info("action=sync-requested at=%s: starting a cycle", value)
        try:
            self._on_request()
        except Exception:  # the watch must outlive a faulty callback
            log.exception("sync request callback failed")

