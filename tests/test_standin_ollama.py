"""Tests of the Ollama stand-in, through real HTTP and the official ``ollama`` client.

The product's tests trust the stand-in to behave like Ollama; these tests pin
that behaviour down.  Requests go through ``ollama.Client`` wherever the client
has a method for them, and through ``httpx`` (the client's own transport) for
what it cannot express: ``/``, ``/api/version``, raw bodies and headers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import ollama
import pytest

from standins.ollama_server import CONFIG_SIZE, OllamaStandin

CATALOGUE = {
    "llama3.2:latest": 2_000_000,
    "qwen2.5:0.5b": 400_000,
    "nomic-embed-text:latest": 274_000,
}
TIMEOUT = 10.0  # generous upper bound; no test waits for it in the normal case
HEX64 = re.compile(r"[0-9a-f]{64}")
RFC3339_NANO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


@pytest.fixture
def standin() -> Iterator[OllamaStandin]:
    with OllamaStandin(CATALOGUE).start() as server:
        yield server
    # Any exception a handler let escape would have reached this list.
    assert server._handler_errors == []


@pytest.fixture
def client(standin: OllamaStandin) -> Iterator[ollama.Client]:
    with ollama.Client(host=standin.url, timeout=TIMEOUT) as c:
        yield c


def _pull_lines(standin: OllamaStandin, ref: str) -> list[dict]:
    """The raw NDJSON lines of a streaming pull, with the response checked."""
    with httpx.stream("POST", f"{standin.url}/api/pull", json={"model": ref}, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        return [json.loads(line) for line in r.iter_lines()]


# --------------------------------------------------------------------------- basics


def test_root_version_and_ps(standin: OllamaStandin, client: ollama.Client) -> None:
    root = httpx.get(standin.url + "/", timeout=TIMEOUT)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    head = httpx.head(standin.url + "/", timeout=TIMEOUT)
    assert (head.status_code, head.content) == (200, b"")

    version = httpx.get(standin.url + "/api/version", timeout=TIMEOUT)
    assert version.status_code == 200
    assert version.json() == {"version": "0.12.0"}
    assert client.ps().models == []

    with OllamaStandin(version="0.5.7").start() as other:
        assert httpx.get(other.url + "/api/version", timeout=TIMEOUT).json() == {"version": "0.5.7"}


def test_unknown_path_is_404_and_wrong_method_405(standin: OllamaStandin) -> None:
    missing = httpx.get(standin.url + "/api/nope", timeout=TIMEOUT)
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["content-type"].startswith("text/plain")
    assert httpx.get(standin.url + "/api/pull", timeout=TIMEOUT).status_code == 405
    assert httpx.post(standin.url + "/api/tags", timeout=TIMEOUT).status_code == 405


# --------------------------------------------------------------------------- pull


def test_streaming_pull_reports_progress_in_order(standin: OllamaStandin, client: ollama.Client) -> None:
    parts = list(client.pull("llama3.2", stream=True))
    statuses = [p.status for p in parts]

    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer_parts = parts[1:-3]
    layer_digests = list(dict.fromkeys(p.digest for p in layer_parts))
    assert layer_digests == standin.layer_digests("llama3.2")  # the default 2 layers, then the config blob
    totals = {}
    for digest in layer_digests:
        assert digest.startswith("sha256:") and HEX64.fullmatch(digest[7:])
        lines = [p for p in layer_parts if p.digest == digest]
        assert len(lines) >= 3
        assert all(p.status == f"pulling {digest[7:19]}" for p in lines)
        # The first line carries no `completed` (zero fields are left out), then it grows.
        assert lines[0].completed is None
        completed = [p.completed for p in lines[1:]]
        assert completed == sorted(set(completed))
        assert completed[-1] == lines[0].total
        totals[digest] = lines[0].total
    assert sum(totals.values()) == CATALOGUE["llama3.2:latest"]
    # Layers are pulled one after the other, not interleaved.
    assert [p.digest for p in layer_parts] == sorted(
        (p.digest for p in layer_parts), key=layer_digests.index
    )


def test_streaming_pull_wire_format(standin: OllamaStandin) -> None:
    lines = _pull_lines(standin, "qwen2.5:0.5b")
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    assert "completed" not in lines[1] and lines[1]["total"] > 0


def test_layers_parameter_splits_the_size() -> None:
    with OllamaStandin({"big:1b": 1_000_003}, layers=3).start() as server:
        lines = _pull_lines(server, "big:1b")
        listed = httpx.get(server.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    totals = {line["digest"]: line["total"] for line in lines if "digest" in line}
    assert len(totals) == 4  # three layers and the config blob
    assert totals[server.layer_digests("big:1b")[-1]] == CONFIG_SIZE
    # /api/tags's size is the manifest's layers plus its config (Manifest.Size), as the stream's totals.
    assert sum(totals.values()) == listed[0]["size"] == 1_000_003


def test_a_blob_already_held_streams_one_line_of_its_whole_size(standin: OllamaStandin) -> None:
    first = _pull_lines(standin, "llama3.2")
    again = _pull_lines(standin, "llama3.2")
    sizes = {line["digest"]: line["total"] for line in first if "digest" in line}
    # download.go's downloadBlob: a blob on disk is one line, Total == Completed == its size.
    assert [line for line in again if "digest" in line] == [
        {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": total}
        for digest, total in sizes.items()]


def test_non_streaming_pull(standin: OllamaStandin, client: ollama.Client) -> None:
    result = client.pull("qwen2.5:0.5b")
    assert result.status == "success"

    raw = httpx.post(
        standin.url + "/api/pull", json={"model": "nomic-embed-text", "stream": False}, timeout=TIMEOUT
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.json() == {"status": "success"}
    assert set(standin.installed()) == {"qwen2.5:0.5b", "nomic-embed-text:latest"}


def test_old_name_field_is_accepted(standin: OllamaStandin) -> None:
    raw = httpx.post(standin.url + "/api/pull", json={"name": "llama3.2", "stream": False}, timeout=TIMEOUT)
    assert (raw.status_code, raw.json()) == (200, {"status": "success"})
    assert standin.installed() == {"llama3.2:latest": 2_000_000}


def test_pull_then_list_shows_predictable_digest_and_size(
    standin: OllamaStandin, client: ollama.Client
) -> None:
    assert client.list().models == []
    client.pull("llama3.2")

    (model,) = client.list().models
    assert model.model == "llama3.2:latest"
    assert model.size == 2_000_000
    assert model.digest == hashlib.sha256(b"llama3.2:latest").hexdigest()
    assert model.digest == standin.digest_of("llama3.2")
    assert isinstance(model.modified_at, datetime) and model.modified_at.tzinfo is not None
    assert model.details.family == "llama" and model.details.format == "gguf"

    (raw,) = httpx.get(standin.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    assert raw["name"] == raw["model"] == "llama3.2:latest"
    assert RFC3339_NANO_UTC.fullmatch(raw["modified_at"])
    assert set(raw["details"]) == {
        "parent_model", "format", "family", "families", "parameter_size", "quantization_level"
    }


def test_digest_is_the_same_across_instances() -> None:
    assert OllamaStandin().digest_of("x/y:z") == OllamaStandin().digest_of("X/Y:Z")
    assert OllamaStandin().digest_of("qwen2.5:0.5b") == hashlib.sha256(b"qwen2.5:0.5b").hexdigest()


def test_pull_of_unknown_model(standin: OllamaStandin, client: ollama.Client) -> None:
    stream = client.pull("nope:1b", stream=True)
    assert next(stream).status == "pulling manifest"
    with pytest.raises(ollama.ResponseError) as streamed:
        next(stream)
    assert streamed.value.error == "pull model manifest: file does not exist"
    assert streamed.value.status_code == -1

    with pytest.raises(ollama.ResponseError) as blocking:
        client.pull("nope:1b")
    assert blocking.value.error == "pull model manifest: file does not exist"
    assert blocking.value.status_code == 500

    assert standin.installed() == {}
    assert standin.pull_count["nope:1b"] == 2


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"model": ""}', b'{"model": 7}'])
def test_bad_pull_body_is_400(standin: OllamaStandin, body: bytes) -> None:
    raw = httpx.post(standin.url + "/api/pull", content=body, timeout=TIMEOUT)
    assert (raw.status_code, raw.json()) == (400, {"error": "invalid model name"})


@pytest.mark.parametrize("name", ["bad name", "a/b/c/d", "llama3.2:", "-x", "x:t@g"])
def test_invalid_name_is_400(standin: OllamaStandin, client: ollama.Client, name: str) -> None:
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as err:
            result = client.pull(name, stream=stream)
            if stream:
                list(result)
        assert (err.value.status_code, err.value.error) == (400, "invalid model name")
    assert sum(standin.pull_count.values()) == 0


def test_pull_with_ollama_hub_prefix_is_the_same_model(standin: OllamaStandin, client: ollama.Client) -> None:
    client.pull("registry.ollama.ai/library/llama3.2")
    client.pull("library/llama3.2:latest")
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    assert standin.pull_count["llama3.2:latest"] == 2


# --------------------------------------------------------------------------- show / delete


def test_show_known_and_unknown(standin: OllamaStandin, client: ollama.Client) -> None:
    client.pull("qwen2.5:0.5b")
    shown = client.show("qwen2.5:0.5b")
    assert shown.details.family == "qwen"
    assert shown.details.parameter_size == "0.5B"
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo["general.architecture"] == "qwen"
    assert "FROM " in shown.modelfile and shown.template and shown.parameters
    assert shown.modified_at == client.list().models[0].modified_at

    # ShowHandler and DeleteHandler name the model as the request did
    for name, shown_as in [("ghost", "ghost"), ("ghost:7b", "ghost:7b"), ("llama3.2", "llama3.2")]:
        with pytest.raises(ollama.ResponseError) as err:
            client.show(name)
        assert (err.value.status_code, err.value.error) == (404, f"model '{shown_as}' not found")


def test_delete_known_and_unknown(standin: OllamaStandin, client: ollama.Client) -> None:
    client.pull("llama3.2")
    client.pull("qwen2.5:0.5b")

    raw = httpx.request("DELETE", standin.url + "/api/delete", json={"model": "llama3.2"}, timeout=TIMEOUT)
    assert (raw.status_code, raw.content) == (200, b"")
    assert [m.model for m in client.list().models] == ["qwen2.5:0.5b"]

    with pytest.raises(ollama.ResponseError) as err:
        client.delete("llama3.2")
    assert (err.value.status_code, err.value.error) == (404, "model 'llama3.2' not found")
    with pytest.raises(ollama.ResponseError) as err:
        client.show("llama3.2")
    assert err.value.status_code == 404

    assert client.delete("qwen2.5:0.5b").status == "success"
    assert client.list().models == []
    assert standin.delete_count == {"llama3.2:latest": 2, "qwen2.5:0.5b": 1}


def test_latest_normalisation_and_case_insensitive_lookup(
    standin: OllamaStandin, client: ollama.Client
) -> None:
    client.pull("Llama3.2")
    client.pull("llama3.2:latest")
    assert [m.model for m in client.list().models] == ["Llama3.2:latest"]  # first spelling kept
    assert standin.pull_count == {"llama3.2:latest": 2}
    assert client.show("LLAMA3.2").details.family == "llama"
    assert standin.digest_of("Llama3.2") == standin.digest_of("llama3.2:latest")
    client.delete("llama3.2:latest")
    assert standin.installed() == {}


def test_repull_of_the_same_manifest_removes_no_layers(standin: OllamaStandin) -> None:
    # PullModel says "removing unused layers" only for blobs of the old manifest the new one lacks.
    assert {"status": "removing unused layers"} not in _pull_lines(standin, "llama3.2")
    assert _pull_lines(standin, "llama3.2")[-3:] == [
        {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


# --------------------------------------------------------------------------- fault injection


def test_fail_next_pulls_fails_n_times_then_succeeds(standin: OllamaStandin, client: ollama.Client) -> None:
    standin.fail_next_pulls("llama3.2", 2, "max retries exceeded: EOF")

    for _ in range(2):
        seen = []
        with pytest.raises(ollama.ResponseError) as err:
            for part in client.pull("llama3.2:latest", stream=True):
                seen.append(part)
        assert (err.value.status_code, err.value.error) == (-1, "max retries exceeded: EOF")
        assert seen[0].status == "pulling manifest"
        assert any(p.completed for p in seen)  # it failed mid-stream, after progress
        assert client.list().models == []

    assert client.pull("llama3.2").status == "success"
    assert standin.installed() == {"llama3.2:latest": 2_000_000}
    assert standin.pull_count["llama3.2:latest"] == 3


def test_fail_next_pulls_without_streaming_is_500(standin: OllamaStandin, client: ollama.Client) -> None:
    standin.fail_next_pulls("qwen2.5:0.5b", 1)
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("qwen2.5:0.5b")
    assert err.value.status_code == 500
    assert err.value.error == "max retries exceeded: unexpected EOF"
    assert standin.installed() == {}
    assert client.pull("qwen2.5:0.5b").status == "success"


def test_held_pulls_block_while_other_requests_answer(standin: OllamaStandin) -> None:
    def pull(ref: str) -> str:
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as own:
            return own.pull(ref).status

    with standin.hold_pulls() as gate, ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(pull, "llama3.2"), pool.submit(pull, "qwen2.5:0.5b")]
        assert gate.wait_for_pulls(2, timeout=TIMEOUT)
        assert gate.held == 2
        # The server is threaded: the held pulls block nothing else.
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as other:
            assert other.list().models == []
        assert not any(f.done() for f in futures)
        gate.release()
        assert [f.result(timeout=TIMEOUT) for f in futures] == ["success", "success"]

    assert set(standin.installed()) == {"llama3.2:latest", "qwen2.5:0.5b"}
    assert gate.held == 0


def test_held_stream_has_already_delivered_its_first_lines(
    standin: OllamaStandin, client: ollama.Client
) -> None:
    # Lines arriving while the server is blocked prove they are flushed one by one.
    with standin.hold_pulls() as gate:
        stream = client.pull("llama3.2", stream=True)
        assert next(stream).status == "pulling manifest"
        first = next(stream)
        assert first.digest and first.total and first.completed is None
        assert gate.wait_for_pulls(1, timeout=TIMEOUT)
        assert standin.installed() == {}
    assert [p.status for p in stream][-1] == "success"
    assert "llama3.2:latest" in standin.installed()


def test_many_parallel_pulls_are_thread_safe(standin: OllamaStandin) -> None:
    refs = list(CATALOGUE) * 4

    def pull(ref: str) -> str:
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as own:
            return [p.status for p in own.pull(ref, stream=True)][-1]

    with ThreadPoolExecutor(max_workers=len(refs)) as pool:
        assert list(pool.map(pull, refs)) == ["success"] * len(refs)
    assert standin.installed() == CATALOGUE
    assert standin.pull_count == {ref: 4 for ref in CATALOGUE}
    assert standin.requests.count(("POST", "/api/pull")) == len(refs)


def test_pull_delay_still_completes(standin: OllamaStandin, client: ollama.Client) -> None:
    standin.set_pull_delay(0.001)
    assert client.pull("nomic-embed-text").status == "success"
    assert standin.installed() == {"nomic-embed-text:latest": 274_000}


# --------------------------------------------------------------------------- stop / restart


def test_stop_refuses_connections_and_restart_keeps_models(
    standin: OllamaStandin, client: ollama.Client
) -> None:
    client.pull("llama3.2")
    url = standin.url
    standin.stop()
    standin.stop()  # idempotent

    with pytest.raises(ConnectionError):
        client.list()  # the same client: its pooled keep-alive connection was cut too
    with pytest.raises(ConnectionError):
        ollama.Client(host=url, timeout=TIMEOUT).list()

    standin.restart()
    assert standin.url == url
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    client.pull("qwen2.5:0.5b")
    assert set(standin.installed()) == {"llama3.2:latest", "qwen2.5:0.5b"}


def test_stop_interrupts_a_held_pull_which_installs_nothing(standin: OllamaStandin) -> None:
    def pull() -> None:
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as own:
            list(own.pull("llama3.2", stream=True))

    gate = standin.hold_pulls()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(pull)
        assert gate.wait_for_pulls(1, timeout=TIMEOUT)
        standin.stop()
        # Cut mid-stream: httpx reports the truncated chunked body.
        with pytest.raises(httpx.HTTPError):
            future.result(timeout=TIMEOUT)
    standin.restart()
    assert standin.installed() == {}
    assert standin.pull_count["llama3.2:latest"] == 1


def test_client_disconnect_mid_stream_does_not_break_the_server(
    standin: OllamaStandin, client: ollama.Client
) -> None:
    with standin.hold_pulls() as gate:
        with httpx.stream("POST", standin.url + "/api/pull", json={"model": "llama3.2"}, timeout=TIMEOUT) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines)) == {"status": "pulling manifest"}
            assert gate.wait_for_pulls(1, timeout=TIMEOUT)
        # Leaving the block closed the connection while the pull was held.
    # After the release the handler writes into a closed socket; the fixture
    # checks that nothing escaped, and the server must still answer.
    assert client.pull("qwen2.5:0.5b").status == "success"
    assert "qwen2.5:0.5b" in standin.installed()


def test_context_manager_starts_and_stops() -> None:
    server = OllamaStandin()
    with server as entered:
        assert entered is server
        assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=TIMEOUT)


# --------------------------------------------------------------------------- hand changes and logs


def test_install_and_remove_by_hand_are_visible(standin: OllamaStandin, client: ollama.Client) -> None:
    standin.install("mistral:7b", 4_100_000)
    standin.install("llama3.2")  # size from the catalogue
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"mistral:7b", "llama3.2:latest"}
    assert models["mistral:7b"].size == 4_100_000
    assert models["mistral:7b"].digest == hashlib.sha256(b"mistral:7b").hexdigest()
    assert models["llama3.2:latest"].size == 2_000_000
    assert client.show("mistral:7b").details.parameter_size == "7B"
    assert standin.installed() == {"mistral:7b": 4_100_000, "llama3.2:latest": 2_000_000}

    with pytest.raises(KeyError):
        standin.remove("mistral")  # no tag means ":latest", which is not installed
    standin.remove("MISTRAL:7b")
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    with pytest.raises(ollama.ResponseError):
        client.show("mistral:7b")

    with pytest.raises(ValueError):
        standin.install("not-in-catalogue:1b")  # no size to take from the catalogue
    with pytest.raises(ValueError):
        standin.install("bad name", 1)
    standin.add_to_catalogue("phi3:mini", 2_200_000)
    assert client.pull("phi3:mini").status == "success"
    assert standin.installed()["phi3:mini"] == 2_200_000


def test_request_log_and_counters(standin: OllamaStandin, client: ollama.Client) -> None:
    client.list()
    client.pull("llama3.2")
    client.delete("llama3.2")
    with pytest.raises(ollama.ResponseError):
        client.delete("llama3.2")
    with pytest.raises(ollama.ResponseError):
        client.pull("unknown")
    httpx.get(standin.url + "/api/version?x=1", timeout=TIMEOUT)

    assert standin.requests == [
        ("GET", "/api/tags"),
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/pull"),
        ("GET", "/api/version"),
    ]
    assert standin.pull_count == {"llama3.2:latest": 1, "unknown:latest": 1}
    assert standin.delete_count == {"llama3.2:latest": 2}


def test_held_listings_block_until_released(standin: OllamaStandin) -> None:
    standin.install("llama3.2:1b", 1000)

    def listing() -> list[str]:
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as own:
            return [m.model for m in own.list().models]

    with standin.hold_listings() as gate, ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(listing)
        assert gate.wait_for_listings(1, timeout=TIMEOUT) and gate.held == 1
        assert not future.done()
        with ollama.Client(host=standin.url, timeout=TIMEOUT) as other:
            assert other.show("llama3.2:1b").details is not None  # other calls still answer
        gate.release()
        assert future.result(timeout=TIMEOUT) == ["llama3.2:1b"]
    assert listing() == ["llama3.2:1b"]  # a released gate holds nothing any more


def test_listing_uses_ollamas_shortest_name_and_existing_spellings(standin: OllamaStandin) -> None:
    # server/routes.go ListHandler: `name` and `model` are both n.DisplayShortest(); a pull's parts
    # take the spelling of an installed model's equal part (getExistingName).
    standin.add_to_catalogue("hf.co/Org/Model-GGUF:Q4_K_M", 1000)
    standin.add_to_catalogue("hf.co/org/other:q4_k_m", 2000)
    standin.add_to_catalogue("me/tiny:1b", 3000)
    standin.add_to_catalogue("llama3.2:1b", 4000)
    for reference in ("registry.ollama.ai/library/llama3.2:1b", "https://hf.co/Org/Model-GGUF:Q4_K_M",
                      "hf.co/org/other:q4_k_m", "registry.ollama.ai/me/tiny:1b"):
        response = httpx.post(standin.url + "/api/pull", json={"model": reference, "stream": False}, timeout=TIMEOUT)
        assert response.json() == {"status": "success"}, reference
    listed = httpx.get(standin.url + "/api/tags", timeout=TIMEOUT).json()["models"]
    assert all(m["name"] == m["model"] for m in listed)
    assert sorted(m["name"] for m in listed) == ["hf.co/Org/Model-GGUF:Q4_K_M", "hf.co/Org/other:Q4_K_M",
                                                 "llama3.2:1b", "me/tiny:1b"]
    assert httpx.post(standin.url + "/api/pull", json={"model": "a/b/c/d"}, timeout=TIMEOUT).status_code == 400
