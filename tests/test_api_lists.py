"""Lists beyond the seed's, all additive: pages (`limit`, `continue`), `ETag` with `If-None-Match`,
gzip; and a list after a write serialises only the models that changed."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import http.client
import json
import tracemalloc
import urllib.parse

import httpx
import pytest

from apirig import ApiRig
from ollama_gitops.reconciler.models.desired import ModelKey

PLAIN = {"Accept-Encoding": "identity"}  # httpx asks for gzip by default; the seed's clients may not


@pytest.fixture
def lists(tmp_path, ollama):  # type: ignore[no-untyped-def]
    rig = ApiRig(tmp_path, ollama)
    rig.seed(("llama3.2", "1b"), ("gemma3", "1b"), ("phi3", "mini"), ("qwen2.5", "0.5b"), ("mistral", "7b"))
    rig.start()
    yield rig
    rig.stop()


def names(response: httpx.Response) -> list[str]:
    return [m["name"] for m in response.json()["items"]]


def test_a_list_without_paging_is_the_seeds_body_byte_for_byte(lists: ApiRig) -> None:
    response = lists.client.get("/api/v1/models", headers=PLAIN)
    assert response.status_code == 200 and "content-encoding" not in response.headers
    items = response.json()["items"]
    assert list(response.json()) == ["items"] and len(items) == 5
    assert response.content == (json.dumps({"items": items}, separators=(",", ":")) + "\n").encode()


def test_pages_walk_the_list_in_name_order_each_model_once(lists: ApiRig) -> None:
    everything = names(lists.client.get("/api/v1/models"))
    first = lists.client.get("/api/v1/models", params={"limit": 2})
    assert first.status_code == 200 and names(first) == everything[:2]
    metadata = first.json()["metadata"]
    assert metadata["remainingItemCount"] == 3 and list(first.json()) == ["items", "metadata"]
    # A model added between two pages sorts before the token's place: the walk neither repeats nor skips.
    lists.work.model("default", "aaa", "1b")
    lists.publish("add a model before the token")
    seen = names(first)
    token = metadata["continue"]
    while token:
        page = lists.client.get("/api/v1/models", params={"limit": 2, "continue": token})
        assert page.status_code == 200, page.text
        seen += names(page)
        token = page.json()["metadata"].get("continue")
    assert seen == everything and page.json()["metadata"] == {}
    rest = lists.client.get("/api/v1/models", params={"continue": first.json()["metadata"]["continue"]})
    assert names(rest) == everything[2:]  # `continue` without `limit`: all the rest


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "0"}, "invalid limit '0': it must be a positive integer"),
    ({"limit": "-1"}, "invalid limit '-1'"),
    ({"limit": "ten"}, "invalid limit 'ten'"),
    ({"limit": "1" * 10}, "invalid limit"),
    ({"limit": "2", "continue": "not-a-token"}, "invalid continue token: use the metadata.continue value"),
    ({"continue": "eyJ2IjoxfQ"}, "invalid continue token"),  # {"v":1}: well-formed, but not ours
])
def test_a_bad_limit_or_token_is_a_clear_400(lists: ApiRig, params: dict, message: str) -> None:
    response = lists.client.get("/api/v1/models", params=params)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_a_token_goes_on_only_in_its_own_namespace(lists: ApiRig) -> None:
    token = lists.client.get("/api/v1/models", params={"limit": 1}).json()["metadata"]["continue"]
    response = lists.client.get("/api/v1/models", params={"namespace": "team-a", "continue": token})
    assert response.status_code == 400
    assert "it is for namespace 'default', not 'team-a'" in response.json()["error"]


def test_if_none_match_is_304_until_the_list_changes(lists: ApiRig) -> None:
    response = lists.client.get("/api/v1/models", headers=PLAIN)
    tag = response.headers["etag"]
    assert response.headers["vary"] == "Accept-Encoding"
    again = lists.client.get("/api/v1/models", headers={**PLAIN, "If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    page = lists.client.get("/api/v1/models", params={"limit": 2}, headers=PLAIN)
    assert page.headers["etag"] != tag  # a page is a representation of its own
    assert lists.client.get("/api/v1/models", params={"limit": 2},
                            headers={"If-None-Match": page.headers["etag"], **PLAIN}).status_code == 304
    created = lists.client.post("/api/v1/models", json={"name": "smollm2", "tag": "135m"})
    assert created.status_code == 201
    changed = lists.client.get("/api/v1/models", headers={**PLAIN, "If-None-Match": tag})
    assert changed.status_code == 200 and "smollm2-135m" in names(changed) and changed.headers["etag"] != tag


def test_gzip_when_asked_with_the_same_items(lists: ApiRig) -> None:
    plain = lists.client.get("/api/v1/models", headers=PLAIN)
    with lists.client.stream("GET", "/api/v1/models", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip" and response.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == plain.content
    assert response.headers["etag"] != plain.headers["etag"]  # another representation, another tag
    refused = lists.client.get("/api/v1/models", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers and refused.content == plain.content


def test_a_list_after_a_write_serialises_only_the_model_that_changed(lists: ApiRig) -> None:
    assert lists.running is not None and lists.running.catalog is not None
    stats = lists.running.catalog.stats
    lists.settle()
    before = lists.client.get("/api/v1/models").json()["items"]
    assert all(m["state"] == "Ready" for m in before)
    serialised = stats.serialised
    loads = lists.running.repository.loader_stats
    listed, parsed = loads.namespaces_listed, loads.parsed
    assert lists.client.post("/api/v1/models", json={"name": "smollm2", "tag": "135m"}).status_code == 201
    # The API took its own write in from the file it wrote: no namespace listed again, one file parsed.
    assert (loads.namespaces_listed - listed, loads.parsed - parsed) == (0, 1)
    after = lists.client.get("/api/v1/models").json()["items"]
    assert stats.serialised - serialised == 1
    assert [m for m in after if m["name"] != "smollm2-135m"] == before
    serialised = stats.serialised
    refreshed = lists.client.post("/api/v1/models/gemma3-1b/refresh")
    assert refreshed.status_code == 202
    lists.client.get("/api/v1/models")
    assert stats.serialised - serialised == 1  # the refreshed file's new blob


def test_every_namespaces_list_joins_the_namespaces_lists_bytes(lists: ApiRig) -> None:
    """The dashboard's `?namespace=*` is each namespace's list joined: the same items, made from the
    same cached bytes (nothing serialised again), and the seed's JSON byte for byte."""
    assert lists.running is not None and lists.running.catalog is not None
    stats = lists.running.catalog.stats
    lists.work.model("other", "tinyllama", "1b")
    lists.publish("a second namespace")
    default = lists.client.get("/api/v1/models", headers=PLAIN).json()["items"]
    other = lists.client.get("/api/v1/models", params={"namespace": "other"}, headers=PLAIN).json()["items"]
    serialised = stats.serialised
    every = lists.client.get("/api/v1/models", params={"namespace": "*"}, headers=PLAIN)
    assert every.status_code == 200 and every.json()["items"] == default + other and len(other) == 1
    assert every.content == (json.dumps({"items": default + other}, separators=(",", ":")) + "\n").encode()
    assert stats.serialised == serialised
    assert lists.client.post("/api/v1/models", params={"namespace": "other"},
                             json={"name": "smollm2", "tag": "135m"}).status_code == 201
    names_now = [m["name"] for m in lists.client.get("/api/v1/models", params={"namespace": "*"}).json()["items"]]
    assert names_now == [m["name"] for m in default] + ["smollm2-135m", "tinyllama-1b"]
    assert stats.serialised - serialised == 1  # the new model only


def test_serve_loads_each_commit_once_for_the_reconciler_and_the_api(lists: ApiRig) -> None:
    """One loader in `serve`: the reconciler and the API count in one `LoadStats`; the start (the API's
    fetch, then the cold cycle) parses each file once, and a write then the cycle that fetches it
    parses the new file once; both sides hold the same desired state, not two copies of it."""
    assert lists.running is not None and lists.running.service is not None
    reconciler, repository = lists.running.service.reconciler, lists.running.repository
    loads = repository.loader_stats
    assert reconciler.shared_loader is not None and reconciler.shared_loader.stats is loads
    lists.settle()
    assert loads.parsed == 5  # the five seeded files, for both sides
    assert reconciler.desired is repository.desired
    assert lists.client.post("/api/v1/models", json={"name": "smollm2", "tag": "135m"}).status_code == 201
    lists.settle()
    assert loads.parsed == 6
    assert reconciler.desired is repository.desired and reconciler.desired is not None
    assert "smollm2-135m" in {key.name for key in reconciler.desired.models}


def test_a_list_after_a_status_change_serialises_the_models_whose_status_changed(lists: ApiRig) -> None:
    """A list keeps each model's record as its values, not a copy of the record: a status that moved
    (on the one server, or on a server of its own) is seen, and only its model is made again."""
    assert lists.running is not None and lists.running.catalog is not None and lists.running.service is not None
    stats, store = lists.running.catalog.stats, lists.running.service.store
    lists.settle()
    assert {m["state"] for m in lists.client.get("/api/v1/models").json()["items"]} == {"Ready"}
    serialised = stats.serialised
    with store.editing() as edit:
        edit.status(ModelKey("default", "phi3-mini"), "default").error = "disk full"
    response = lists.client.get("/api/v1/models", headers=PLAIN)
    after = response.json()["items"]
    assert [m.get("error") for m in after if m["name"] == "phi3-mini"] == ["disk full"]
    assert stats.serialised - serialised == 1
    # The models before and after it are the last list's bytes, each run of them one piece: the body is
    # still the seed's JSON of every item, and its pages still cut between items.
    assert response.content == (json.dumps({"items": after}, separators=(",", ":")) + "\n").encode()
    first = lists.client.get("/api/v1/models", params={"limit": 2}).json()
    second = lists.client.get("/api/v1/models", params={"limit": 2, "continue": first["metadata"]["continue"]}).json()
    assert first["items"] + second["items"] == after[:4]
    with store.editing() as edit:  # a second server's entry: the same status values, one more server
        edit.place(ModelKey("default", "gemma3-1b"), "gpu-2", store.record(ModelKey("default", "gemma3-1b")).servers["default"])
    lists.client.get("/api/v1/models")
    assert stats.serialised - serialised == 2
    # A record replaced by one that differs only in what no view shows: the same list, the same tag.
    tag = lists.client.get("/api/v1/models", headers=PLAIN).headers["etag"]
    with store.editing() as edit:
        edit.status(ModelKey("default", "phi3-mini"), "default").applied_commit = "0" * 40
    assert lists.client.get("/api/v1/models", headers=PLAIN).headers["etag"] == tag
    assert stats.serialised - serialised == 2


def _get_streamed(rig: ApiRig, encoding: str) -> int:
    """GET the list with a plain client that reads it 64 KiB at a time (so that what the test process
    allocates is the server's); the bytes read."""
    url = urllib.parse.urlsplit(rig.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", "/api/v1/models", headers={"X-API-Key": rig.api_key or "", "Accept-Encoding": encoding})
        response = connection.getresponse()
        assert response.status == 200
        return sum(len(chunk) for chunk in iter(lambda: response.read(64 * 1024), b""))
    finally:
        connection.close()


def test_cached_gets_make_nothing_and_send_the_kept_body_without_copying_it(lists: ApiRig) -> None:
    """A cached GET serialises nothing, joins no piece, keeps nothing more and copies no more than a
    read's worth of the body at a time, whatever encodings are asked; gzip is made once per list."""
    assert lists.running is not None and lists.running.catalog is not None and lists.running.service is not None
    catalog, store = lists.running.catalog, lists.running.service.store
    lists.settle()
    with store.editing() as edit:  # a body of megabytes from five models: each shows a long error
        for name in ("llama3.2-1b", "gemma3-1b", "phi3-mini", "qwen2.5-0.5b", "mistral-7b"):
            edit.status(ModelKey("default", name), "default").error = name * 100_000
    assert _get_streamed(lists, "identity") > 3_000_000 and _get_streamed(lists, "gzip") > 0
    kept = catalog.model_list("default")
    gzipped, size = kept.gzipped(), len(kept.body)
    stats = dataclasses.replace(catalog.stats)
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        for encoding in ("identity", "gzip", "identity", "identity", "gzip"):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            assert _get_streamed(lists, encoding) == (size if encoding == "identity" else len(gzipped))
            assert tracemalloc.get_traced_memory()[1] - before < size / 4, encoding  # never a copy of the body
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - held < 256 * 1024  # nothing kept per GET
    finally:
        tracemalloc.stop()
    assert catalog.stats == stats  # no list built, no model serialised, no piece joined
    assert catalog.model_list("default") is kept and kept.gzipped() is gzipped
