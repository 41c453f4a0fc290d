"""The list-and-watch cache of managed OllamaModels, driven through the real `kubernetes` client
against the stand-in API server over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from ollama_gitops.reconciler.cluster.cache import ResourceCache
from ollama_gitops.reconciler.cluster.resources import (GROUP, MANAGED_BY, MANAGED_BY_VALUE,
                                                        MANAGED_SELECTOR, PLURAL, VERSION)
from ollama_gitops.reconciler.models.desired import ModelKey
from standins.kube_apiserver import KubeStandin

NS, TEAM = "default", "team"
WAIT = 15.0  # upper bound for waits on other threads (never reached when all is well)
COLLECTION = r"^/apis/ollama\.smithforge\.dev/v1alpha1/ollamamodels$"  # the cluster-wide list and watch
MANAGED = {MANAGED_BY: MANAGED_BY_VALUE}


# ------------------------------------------------------------------------------------------------
# helpers


class Changes:
    """An `on_change` callback that records each batch and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.batches: list[set[ModelKey]] = []

    def __call__(self, keys: set[ModelKey]) -> None:
        with self.cond:
            self.batches.append(keys)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait until `predicate` holds, re-checking it after each batch (the cache has changed by then)."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def all_keys(self) -> set[ModelKey]:
        with self.cond:
            return set().union(*self.batches)


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `predicate` (for state no callback announces, such as the stand-in's request log)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.01)
    return True


def body(name: str, *, labels: dict | None = MANAGED, tag: str = "1b") -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OllamaModel",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"name": "llama3.2", "tag": tag}}


def create(api: client.CustomObjectsApi, name: str, ns: str = NS, **kw) -> dict:
    return api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body(name, **kw))


def patch(api: client.CustomObjectsApi, name: str, patch_body: dict, ns: str = NS) -> dict:
    return api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, patch_body)


def delete(api: client.CustomObjectsApi, name: str, ns: str = NS) -> None:
    api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def hold_next_watch(kube: KubeStandin, seconds: float = 1.5) -> int:
    """Hold the cache's next watch request `seconds` before the server starts it; returns the number
    of watch requests so far. Once the log shows one more, the cache has left its previous watch and
    the held one starts from the version it asked for: writes made meanwhile fall in the gap."""
    kube.delay(COLLECTION, seconds, method="GET", times=1)
    return kube.count("watch")


def k(name: str, ns: str = NS) -> ModelKey:
    return ModelKey(ns, name)


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(params=[False, True], ids=["etcd-versions", "descending-versions"])
def kube(request) -> Iterator[KubeStandin]:
    # resourceVersions are opaque: every test runs also with versions that shrink as they grow.
    with KubeStandin(bookmark_interval=0, descending_versions=request.param) as server:
        server.add_namespace(TEAM)
        yield server


@pytest.fixture
def api(kube: KubeStandin) -> Iterator[client.CustomObjectsApi]:
    with kube.api_client() as c:
        yield client.CustomObjectsApi(c)


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def make_cache(api: client.CustomObjectsApi, changes: Changes) -> Iterator[Callable[..., ResourceCache]]:
    """Start a cache reporting to `changes` (stopped at the end of the test)."""
    made: list[ResourceCache] = []

    def make(**kw) -> ResourceCache:
        kw.setdefault("on_change", changes)
        cache = ResourceCache(kw.pop("api", api), **kw).start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.stop()


# ------------------------------------------------------------------------------------------------
# the initial list


def test_the_initial_list_fills_the_cache_with_managed_resources_only(kube, api, make_cache, changes):
    create(api, "llama")
    create(api, "gemma", TEAM, tag="4b")
    create(api, "hand-made", labels={"app": "other"})  # not ollama-gitops's: never cached

    cache = make_cache()
    assert cache.wait_synced(WAIT) and cache.synced
    assert set(cache.snapshot()) == {k("llama"), k("gemma", TEAM)}
    assert cache.get(k("hand-made")) is None
    gemma = cache.get(k("gemma", TEAM))
    assert gemma is not None and gemma.reference == "llama3.2:4b" and gemma.managed
    assert gemma.resource_version == kube.objects(TEAM)[0]["metadata"]["resourceVersion"]
    assert cache.take_changed() == {k("llama"), k("gemma", TEAM)}
    assert cache.take_changed() == set()
    assert changes.batches[0] == {k("llama"), k("gemma", TEAM)}

    # one cluster-wide list with the managed selector, then a watch from the list's version
    assert kube.wait_for_watches(1, timeout=WAIT)
    [listed] = kube.requests("list")
    assert listed.path == "/apis/ollama.smithforge.dev/v1alpha1/ollamamodels"
    assert listed.query["labelSelector"] == MANAGED_SELECTOR
    watched = kube.requests("watch")[0]
    assert watched.path == listed.path and watched.query["labelSelector"] == MANAGED_SELECTOR
    assert watched.query["resourceVersion"] == kube.resource_version
    assert watched.query["allowWatchBookmarks"] == "true" and watched.query["timeoutSeconds"] == "300"
    assert cache.stats.lists == 1 and cache.stats.watches == 1


def test_an_empty_cluster_syncs_and_reports_an_empty_first_batch(make_cache, changes):
    cache = make_cache()
    assert cache.wait_synced(WAIT)
    assert changes.wait(lambda: len(changes.batches) == 1)
    assert changes.batches == [set()] and cache.snapshot() == {} and cache.take_changed() == set()


# ------------------------------------------------------------------------------------------------
# following the watch


def test_creates_modifications_and_deletes_are_followed(kube, api, make_cache, changes):
    create(api, "llama")
    cache = make_cache()
    assert cache.wait_synced(WAIT)
    cache.take_changed()
    before = len(changes.batches)

    # an unmanaged resource, then a managed one: only the managed one arrives
    create(api, "hand-made", labels={"app": "other"})
    create(api, "gemma", TEAM)
    assert changes.wait(lambda: cache.get(k("gemma", TEAM)) is not None)
    assert cache.take_changed() == {k("gemma", TEAM)}
    assert k("hand-made") not in changes.all_keys()

    # a label
    patch(api, "llama", {"metadata": {"labels": {"tier": "gold"}}})
    assert changes.wait(lambda: cache.get(k("llama")).labels.get("tier") == "gold")
    assert cache.take_changed() == {k("llama")}

    # the status subresource
    api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "llama", {"status": {"phase": "Ready"}})
    assert changes.wait(lambda: cache.get(k("llama")).status.get("phase") == "Ready")
    assert cache.take_changed() == {k("llama")}
    [stored] = [o for o in kube.objects(NS) if o["metadata"]["name"] == "llama"]
    assert cache.get(k("llama")).resource_version == stored["metadata"]["resourceVersion"]

    # a delete
    delete(api, "gemma", TEAM)
    assert changes.wait(lambda: cache.get(k("gemma", TEAM)) is None)
    assert cache.take_changed() == {k("gemma", TEAM)}

    # the managed-by label taken off: it leaves the selector, so it leaves the cache
    patch(api, "llama", {"metadata": {"labels": {MANAGED_BY: None}}})
    assert changes.wait(lambda: cache.get(k("llama")) is None)
    assert cache.take_changed() == {k("llama")}

    # one batch per change, and never a second list
    assert changes.batches[before:] == [{k("gemma", TEAM)}, {k("llama")}, {k("llama")}, {k("gemma", TEAM)},
                                        {k("llama")}]
    assert kube.count("list") == 1 and cache.stats.relists_after_gone == 0 and cache.stats.errors == 0


def test_a_quiet_period_lists_nothing_and_resumes_from_bookmarks():
    changes = Changes()
    with KubeStandin(bookmark_interval=0.1) as kube, kube.api_client() as c:
        api = client.CustomObjectsApi(c)
        create(api, "llama")
        cache = ResourceCache(api, watch_timeout=1, on_change=changes).start()
        try:
            assert cache.wait_synced(WAIT)
            cache.take_changed()
            listed_rv = kube.resource_version
            kube.add_namespace("elsewhere")  # moves the global version without an OllamaModel event

            # a few watches come and go, bookmarks flowing; nothing is listed and nothing changes
            assert eventually(lambda: kube.count("watch") >= 3)
            assert kube.count("list") == 1 and cache.stats.lists == 1
            assert cache.take_changed() == set() and changes.batches == [{k("llama")}]
            # each watch resumed from the last version seen: the later ones from a bookmark's version
            versions = [r.query["resourceVersion"] for r in kube.requests("watch")]
            assert versions[0] == listed_rv and versions[-1] == kube.resource_version != listed_rv
            assert cache.stats.events >= 2  # the bookmarks
        finally:
            cache.stop()


def test_a_watch_ended_by_its_timeout_is_resumed_without_a_list_and_loses_nothing(kube, api, make_cache, changes):
    create(api, "llama")
    cache = make_cache(watch_timeout=1)
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    cache.take_changed()

    watches = hold_next_watch(kube)
    assert eventually(lambda: kube.count("watch") > watches)  # the first watch timed out; none is open now
    create(api, "gemma")  # while no watch is open: the resumed watch replays these
    patch(api, "llama", {"spec": {"tag": "3b"}})
    assert changes.wait(lambda: cache.get(k("llama")).reference == "llama3.2:3b")
    assert cache.get(k("gemma")) is not None
    assert cache.take_changed() == {k("gemma"), k("llama")}

    assert eventually(lambda: kube.count("watch") >= 3)
    assert kube.count("list") == 1 and cache.stats.lists == 1 and cache.stats.watches >= 3
    assert cache.stats.relists_after_gone == 0 and cache.stats.errors == 0


def test_an_expired_version_relists_and_drops_what_was_deleted_meanwhile(kube, api, make_cache, changes):
    create(api, "llama")
    create(api, "gemma")
    create(api, "phi")
    cache = make_cache(watch_timeout=1)
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    cache.take_changed()

    watches = hold_next_watch(kube)
    assert eventually(lambda: kube.count("watch") > watches)
    delete(api, "gemma")  # unseen by any watch
    patch(api, "llama", {"spec": {"tag": "3b"}})
    kube.expire_history()  # the held watch's version is now too old: 410

    assert changes.wait(lambda: cache.stats.lists == 2 and cache.get(k("gemma")) is None)
    assert cache.get(k("llama")).reference == "llama3.2:3b"
    assert set(cache.snapshot()) == {k("llama"), k("phi")}
    assert cache.take_changed() == {k("gemma"), k("llama")}  # phi did not change
    assert changes.batches[-1] == {k("gemma"), k("llama")}
    assert cache.stats.relists_after_gone == 1 and cache.stats.errors == 0
    assert kube.count("list") == 2

    # and it watches again, from the new list's version
    relist_rv = kube.resource_version
    assert eventually(lambda: any(r.query["resourceVersion"] == relist_rv for r in kube.requests("watch")))


# ------------------------------------------------------------------------------------------------
# failures and stopping


def test_a_failing_list_is_retried_until_it_succeeds(kube, api, make_cache):
    create(api, "llama")
    kube.inject("GET", COLLECTION, 500, times=2)
    cache = make_cache(retry_delay=0.05)
    assert cache.wait_synced(WAIT)
    assert set(cache.snapshot()) == {k("llama")}
    assert kube.count("list") == 3 and cache.stats.lists == 3 and cache.stats.errors == 2


def test_a_failing_watch_is_followed_by_a_list(kube, api, make_cache, changes):
    create(api, "llama")
    cache = make_cache(watch_timeout=1, retry_delay=0.05)
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    kube.inject("GET", COLLECTION, 500, times=1)  # the next watch, once this one times out
    watches = kube.count("watch")
    assert eventually(lambda: kube.count("list") == 2)  # events may have been missed: list again
    assert eventually(lambda: kube.watch_count() == 1)  # and watch again
    assert kube.count("watch") == watches + 2  # the failed one, then the one after the list
    assert cache.stats.errors == 1 and cache.stats.relists_after_gone == 0
    assert set(cache.snapshot()) == {k("llama")} and cache.take_changed() == {k("llama")}  # nothing new


def test_stop_interrupts_the_retry_wait_when_the_server_is_unreachable(make_cache):
    dead = KubeStandin().start()
    config = dead.client_configuration()
    dead.stop()  # the port now refuses connections
    with client.ApiClient(config) as c:
        cache = make_cache(api=client.CustomObjectsApi(c), retry_delay=60)
        assert eventually(lambda: cache.stats.errors >= 1)
        assert not cache.synced and not cache.wait_synced(0.01)
        started = time.monotonic()
        cache.stop()
        assert not cache.running and time.monotonic() - started < 2


def test_stop_ends_an_open_watch_promptly(kube, api, make_cache):
    create(api, "llama")
    cache = make_cache(watch_timeout=300)
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    started = time.monotonic()
    cache.stop()
    assert not cache.running and time.monotonic() - started < 2
    assert eventually(lambda: kube.watch_count() == 0)  # the server saw the connection go
    assert cache.stats.errors == 0 and kube.count("list") == 1
    assert cache.get(k("llama")) is not None  # what it knew stays readable


def test_a_failing_on_change_callback_does_not_stop_the_cache(api, make_cache):
    calls = Changes()

    def faulty(keys: set[ModelKey]) -> None:
        calls(keys)
        raise RuntimeError("callback bug")

    cache = make_cache(on_change=faulty)
    assert cache.wait_synced(WAIT)
    create(api, "llama")
    assert calls.wait(lambda: cache.get(k("llama")) is not None)
    assert cache.running and cache.stats.lists == 1 and cache.stats.errors == 0


# ------------------------------------------------------------------------------------------------
# own writes


def test_own_writes_go_into_the_cache_at_once_and_a_late_answer_undoes_nothing(api):
    cache = ResourceCache(api)  # not started: only what is observed
    created = create(api, "llama")
    cache.observe_write(created)
    patched = patch(api, "llama", {"spec": {"tag": "3b"}})
    cache.observe_write(patched)  # sent after the first was answered: newer
    assert cache.get(k("llama")).reference == "llama3.2:3b"
    # Two writes at once, the later one answered first: the earlier answer, coming last, is not
    # taken for newer (versions are opaque: only the order of answers and of the watch counts).
    with cache.own_write(k("llama")) as first, cache.own_write(k("llama")) as second:
        early = patch(api, "llama", {"spec": {"tag": "8b"}})
        late = patch(api, "llama", {"spec": {"tag": "70b"}})
        second(late)
    first(early)
    assert cache.get(k("llama")).reference == "llama3.2:70b"
    # a write that took the label off releases it; a Status (delete without finalizers) is ignored
    cache.observe_write(patch(api, "llama", {"metadata": {"labels": {MANAGED_BY: None}}}))
    assert cache.get(k("llama")) is None
    cache.observe_write({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
    assert cache.snapshot() == {} and cache.take_changed() == set()  # own writes are not changes


def test_own_writes_do_not_wake_but_a_hand_edit_does(kube, api, make_cache, changes):
    create(api, "llama")
    cache = make_cache()
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    cache.take_changed()
    before = len(changes.batches)
    for tag in ("3b", "8b", "1b"):  # a burst of our own writes: each echo comes back through the watch
        with cache.own_write(k("llama")) as noted:
            noted(patch(api, "llama", {"spec": {"tag": tag}}))
    version = cache.get(k("llama")).resource_version
    patch(api, "llama", {"metadata": {"annotations": {"hand": "edit"}}})  # someone else's
    assert changes.wait(lambda: len(changes.batches) > before)
    assert changes.batches[before:] == [{k("llama")}]  # one wake-up, for the hand edit only
    assert cache.get(k("llama")).resource_version != version and cache.take_changed() == {k("llama")}
    # A hand edit that lands while a write of ours is in flight is reported when the write ends.
    with cache.own_write(k("llama")) as noted:
        patch(api, "llama", {"metadata": {"annotations": {"hand": "again"}}})
        assert eventually(lambda: cache.get(k("llama")).annotations.get("hand") == "again")
        noted(patch(api, "llama", {"spec": {"tag": "3b"}}))
        assert len(changes.batches) == before + 1  # held back while the write is in flight
    assert changes.wait(lambda: len(changes.batches) == before + 2) and changes.batches[-1] == {k("llama")}
    assert eventually(lambda: cache.get(k("llama")).reference == "llama3.2:3b")


def test_an_observed_write_is_not_reported_again_by_the_watch(kube, api, make_cache, changes):
    create(api, "llama")
    cache = make_cache(watch_timeout=1)
    assert cache.wait_synced(WAIT) and kube.wait_for_watches(1, timeout=WAIT)
    cache.take_changed()
    before = len(changes.batches)

    watches = hold_next_watch(kube)
    assert eventually(lambda: kube.count("watch") > watches)  # no watch open: the write is ours alone
    written = patch(api, "llama", {"spec": {"tag": "3b"}})
    cache.observe_write(written)
    assert cache.get(k("llama")).reference == "llama3.2:3b"  # at once, before any event
    create(api, "gemma")  # after the write: once it is in, the write's own event has been handled

    assert changes.wait(lambda: cache.get(k("gemma")) is not None)
    assert cache.take_changed() == {k("gemma")}  # the echo of our own write changed nothing
    assert cache.get(k("llama")).resource_version == written["metadata"]["resourceVersion"]
    assert changes.batches[before:] == [{k("gemma")}]
