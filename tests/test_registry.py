"""Registry lookups (what a pull would download), over real HTTP on both sides.

The registry is `standins/registry.py` (the distribution API as Ollama's registry serves it), the
Ollama server `standins/ollama_server.py`; the client is `reconciler/ollama/registry.py`, and
`OllamaServer.has_blob` the Ollama edge's `HEAD /api/blobs/:digest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from ollama_gitops.reconciler.ollama.registry import (
    MANIFEST_MEDIA_TYPE,
    Blob,
    Manifest,
    ManifestNotFound,
    ManifestUnknown,
    RegistryClient,
    RegistryReference,
    download_bytes,
    held_blobs,
    manifest_url,
    parse_reference,
    redact,
)
from ollama_gitops.reconciler.ollama.server import ModelOperationFailed, OllamaServer, ServerUnreachable
from standins.ollama_server import OllamaStandin
from standins.registry import RegistryStandin, StandinBlob

CATALOGUE = {"llama3.2:1b": 20_000, "llama3.2:3b": 60_000, "acme/tiny:latest": 3_000}
TIMEOUT = 10.0


@pytest.fixture
def registry() -> Iterator[RegistryStandin]:
    with RegistryStandin(CATALOGUE) as server:
        yield server


@pytest.fixture
def client(registry: RegistryStandin) -> Iterator[RegistryClient]:
    with RegistryClient(registry.url, timeout=TIMEOUT) as c:
        yield c


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- references and URLs

@pytest.mark.parametrize(("reference", "expected"), [
    ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
    ("library/llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
    ("registry.ollama.ai/library/llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
    ("Registry.Ollama.AI/Library/llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ("acme/tiny", ("registry.ollama.ai", "acme", "tiny", "latest")),
    ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M")),
    ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t")),
    ("https://localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
    ("hf.co/Library/m", ("hf.co", "Library", "m", "latest")),  # only the default registry's namespace is folded
])
def test_references_resolve_as_ollama_resolves_them(reference: str, expected: tuple[str, ...]) -> None:
    assert parse_reference(reference) == RegistryReference(*expected)


@pytest.mark.parametrize("reference", ["", "a/b/c/d", "x:", ":t", "/x", "a//b", "ns.x/m", "m:t/x", "m@sha256:00",
                                       "-m", "m:-t", "a" * 81, "sp ace"])
def test_invalid_references(reference: str) -> None:
    assert parse_reference(reference) is None


def test_manifest_urls() -> None:
    library = parse_reference("llama3.2:1b")
    named = parse_reference("hf.co/bartowski/x:Q4")
    assert library is not None and named is not None
    assert manifest_url(library) == "https://registry.ollama.ai/v2/library/llama3.2/manifests/1b"
    assert manifest_url(named) == "https://hf.co/v2/bartowski/x/manifests/Q4"
    assert manifest_url(named, insecure=True) == "http://hf.co/v2/bartowski/x/manifests/Q4"
    # A mirror stands in for the default registry only.
    assert manifest_url(library, "http://mirror:5000/") == "http://mirror:5000/v2/library/llama3.2/manifests/1b"
    assert manifest_url(named, "http://mirror:5000") == "https://hf.co/v2/bartowski/x/manifests/Q4"
    assert library.display == "llama3.2:1b" and named.display == "hf.co/bartowski/x:Q4"


def test_redact() -> None:
    assert redact("https://u:secret@mirror:5000/p") == "https://mirror:5000/p"
    assert redact("https://mirror/p") == "https://mirror/p"


# --------------------------------------------------------------------------- manifests

def test_manifest_from_a_mirror_of_the_default_registry(registry: RegistryStandin, client: RegistryClient) -> None:
    result = client.manifest("llama3.2:1b")

    assert isinstance(result, Manifest), result
    assert result.reference == "llama3.2:1b"
    assert result.url == f"{registry.url}/v2/library/llama3.2/manifests/1b"
    assert result.media_type == MANIFEST_MEDIA_TYPE
    assert [(b.digest, b.size, b.media_type) for b in result.layers] == [
        (layer["digest"], layer["size"], layer["mediaType"]) for layer in registry.layers("llama3.2:1b")]
    assert [b.media_type for b in result.layers] == [
        "application/vnd.ollama.image.model", "application/vnd.ollama.image.template",
        "application/vnd.ollama.image.license", "application/vnd.ollama.image.params"]
    config = registry.config("llama3.2:1b")
    assert result.config == Blob(config["digest"], config["size"], config["mediaType"])
    assert result.total_bytes == CATALOGUE["llama3.2:1b"]
    # One request, as Ollama makes it: GET by tag, asking for the one media type Ollama reads.
    [request] = registry.requests
    assert (request.method, request.path) == ("GET", "/v2/library/llama3.2/manifests/1b")
    assert request.headers["accept"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_the_manifest_digest_is_what_ollama_records(registry: RegistryStandin, client: RegistryClient) -> None:
    result = client.manifest("llama3.2:1b")
    assert isinstance(result, Manifest)
    served = registry.manifest("llama3.2:1b")
    assert result.digest == registry.manifest_digest("llama3.2:1b") == f"sha256:{_sha256(served)}"
    # Ollama hashes the manifest file it writes (json.Marshal of what it decoded): the registry
    # serves exactly those bytes, so the digest /api/tags would show is the served bytes' sha256.
    assert result.ollama_digest == _sha256(served)


def test_a_reformatting_mirror_changes_the_content_digest_not_ollamas(registry: RegistryStandin) -> None:
    model = "a" * 64
    # Pretty-printed, with fields Ollama's structs do not have, a key in another case, and
    # characters Go escapes (<, >, &): Ollama re-encodes all that when it writes the manifest.
    served = json.dumps({
        "SchemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{'c' * 64}",
                   "size": 7, "annotations": {"x": "y"}},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{model}", "size": 100,
                    "urls": []},
                   {"mediaType": "application/vnd.ollama.image.<t&p>", "digest": f"sha256:{'b' * 64}", "size": 5,
                    "from": "/models/x"}],
        "annotations": {"org.opencontainers.image.created": "2026-01-01"},
    }, indent=2).encode()
    registry.add_model("mirrored:1", manifest_bytes=served)
    go_bytes = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:' + "c" * 64
        + '","size":7},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:' + model
        + '","size":100},{"mediaType":"application/vnd.ollama.image.\\u003ct\\u0026p\\u003e","digest":"sha256:'
        + "b" * 64 + '","size":5,"from":"/models/x"}]}'
    ).encode()

    with RegistryClient(registry.url, timeout=TIMEOUT) as client:
        result = client.manifest("mirrored:1")

    assert isinstance(result, Manifest), result
    assert result.digest == f"sha256:{_sha256(served)}"
    assert result.ollama_digest == _sha256(go_bytes) != _sha256(served)
    assert result.total_bytes == 112


def test_the_content_digest_header_wins_and_without_it_the_bytes_decide(registry: RegistryStandin,
                                                                        client: RegistryClient) -> None:
    body = registry.manifest("llama3.2:1b")
    registry.content_digest = f"sha256:{'d' * 64}"  # a registry whose header says another digest
    found = client.manifest("llama3.2:1b")
    assert isinstance(found, Manifest) and found.digest == f"sha256:{'d' * 64}"
    assert found.ollama_digest == _sha256(body)  # what Ollama records is still the bytes it writes
    registry.content_digest = None  # a registry (or a proxy) that leaves the header out
    found = client.manifest("llama3.2:1b")
    assert isinstance(found, Manifest) and found.digest == f"sha256:{_sha256(body)}"
    assert "docker-content-digest" not in httpx.get(
        f"{registry.url}/v2/library/llama3.2/manifests/1b", headers={"Accept": MANIFEST_MEDIA_TYPE},
        timeout=TIMEOUT).headers


def test_a_model_that_names_its_registry_is_looked_up_there(registry: RegistryStandin) -> None:
    registry.add_model(f"{registry.host}/acme/named:v1", 4_000)
    with RegistryClient("http://mirror.invalid:1", timeout=TIMEOUT, insecure=True) as client:
        result = client.manifest(f"{registry.host}/acme/named:v1")
    assert isinstance(result, Manifest), result
    assert result.reference == f"{registry.host}/acme/named:v1"
    assert result.total_bytes == 4_000
    assert [r.path for r in registry.requests] == ["/v2/acme/named/manifests/v1"]


def test_namespaced_models_and_case(registry: RegistryStandin, client: RegistryClient) -> None:
    result = client.manifest("acme/Tiny")
    assert isinstance(result, Manifest) and result.reference == "acme/Tiny:latest"
    assert registry.requests[-1].path == "/v2/acme/Tiny/manifests/latest"


@pytest.mark.parametrize("reference", ["nosuch:1b", "llama3.2:70b", "acme/nosuch"])
def test_unknown_model_or_tag_is_not_found(client: RegistryClient, reference: str) -> None:
    result = client.manifest(reference)
    assert isinstance(result, ManifestNotFound), result
    assert result.message == "MANIFEST_UNKNOWN: manifest unknown"


def test_registry_down_is_unknown(registry: RegistryStandin, client: RegistryClient) -> None:
    assert isinstance(client.manifest("llama3.2:1b"), Manifest)  # a pooled connection, then the registry goes
    registry.stop()
    result = client.manifest("llama3.2:1b")
    assert isinstance(result, ManifestUnknown), result
    assert result.reason.startswith("the registry is not reachable")
    registry.restart()
    assert isinstance(client.manifest("llama3.2:1b"), Manifest)


def test_a_registry_that_does_not_answer_in_time_is_unknown(registry: RegistryStandin) -> None:
    registry.hold_requests()
    try:
        with RegistryClient(registry.url, timeout=0.2) as client:
            result = client.manifest("llama3.2:1b")
    finally:
        registry.release()
    assert result == ManifestUnknown("llama3.2:1b", f"{registry.url}/v2/library/llama3.2/manifests/1b",
                                     "the registry did not answer in time")


@pytest.mark.parametrize(("status", "body", "reason"), [
    (503, b"upstream connect error", "the registry answered HTTP 503"),
    (500, b'{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}', "the registry answered HTTP 500: UNKNOWN: unknown error"),
    (429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', "HTTP 429: TOOMANYREQUESTS: slow down"),
    (401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', "refused access (HTTP 401)"),
    (200, b"<html>a captive portal</html>", "not a manifest: not JSON"),
    (200, b"[1, 2]", "not a manifest: manifest is not a JSON object"),
    (200, b'{"schemaVersion": 2, "layers": [{"digest": "sha256:' + b"a" * 64 + b'", "size": "12"}]}',
     "'layers[0].size' is not an integer"),
    (200, b'{"schemaVersion": 2, "layers": [{"digest": "md5:abc", "size": 1}]}', "'md5:abc' is not a sha256 digest"),
    (200, b'{"schemaVersion": 2, "layers": {}}', "'layers' is not a list"),
    (200, b'{"schemaVersion": 2.5, "layers": []}', "'schemaVersion' is not an integer"),
    (200, b'{"manifests": [{"digest": "sha256:' + b"a" * 64 + b'"}]}', "no layers and no config"),
    (200, b'{"layers": [{"digest": "sha256:' + b"a" * 64 + b'", "size": -1}]}', "negative size"),
])
def test_errors_and_garbage_are_unknown(registry: RegistryStandin, client: RegistryClient,
                                        status: int, body: bytes, reason: str) -> None:
    registry.fail_requests(status, body, "application/json")
    result = client.manifest("llama3.2:1b")
    assert isinstance(result, ManifestUnknown), result
    assert reason in result.reason


def test_an_oversized_answer_is_refused(registry: RegistryStandin, client: RegistryClient) -> None:
    registry.fail_requests(200, b" " * (4 * 1024 * 1024 + 1), "application/json")
    result = client.manifest("llama3.2:1b")
    assert isinstance(result, ManifestUnknown) and "over" in result.reason


def test_an_invalid_name_is_unknown_without_a_request(registry: RegistryStandin, client: RegistryClient) -> None:
    assert client.manifest("a/b/c/d") == ManifestUnknown("a/b/c/d", "", "invalid model name")
    assert registry.requests == []


def test_a_host_that_no_url_can_hold_is_unknown() -> None:
    # Ollama's names allow several ':' in a host; no URL does.
    with RegistryClient(timeout=TIMEOUT, insecure=True) as client:
        result = client.manifest("a:b:c/ns/m")
    assert isinstance(result, ManifestUnknown) and result.reason.startswith("not a usable registry URL")


def test_credentials_of_a_mirror_are_sent_and_never_shown(registry: RegistryStandin) -> None:
    url = registry.url.replace("http://", "http://puller:s3cret@")
    with RegistryClient(url, timeout=TIMEOUT) as client:
        found = client.manifest("llama3.2:1b")
        registry.stop()
        down = client.manifest("llama3.2:1b")
    assert isinstance(found, Manifest) and isinstance(down, ManifestUnknown)
    assert registry.requests[0].headers["authorization"].startswith("Basic ")
    for result in (found, down):
        assert "s3cret" not in repr(result) and "puller" not in repr(result)


def test_a_bad_registry_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        RegistryClient("ftp://u:pw@mirror")
    for url in ("mirror:5000", "u:pw@mirror:5000", "ftp://u:pw@mirror"):
        with pytest.raises(ValueError) as raised:
            RegistryClient(url)
        assert "pw" not in str(raised.value) and "mirror" in str(raised.value)


# --------------------------------------------------------------------------- download_bytes

def _manifest(*blobs: tuple[str, int], config: tuple[str, int] | None = None) -> Manifest:
    return Manifest("m:t", "u", "sha256:" + "0" * 64, "0" * 64, MANIFEST_MEDIA_TYPE,
                    tuple(Blob(f"sha256:{d * 64}", size, "application/vnd.ollama.image.model") for d, size in blobs),
                    Blob(f"sha256:{config[0] * 64}", config[1], "application/vnd.docker.container.image.v1+json")
                    if config else None)


@pytest.mark.parametrize(("manifest", "present", "expected"), [
    (_manifest(("a", 100), ("b", 10), config=("c", 1)), set(), 111),
    (_manifest(("a", 100), ("b", 10), config=("c", 1)), {f"sha256:{'b' * 64}"}, 101),
    (_manifest(("a", 100), ("b", 10), config=("c", 1)), {f"sha256:{d * 64}" for d in "abc"}, 0),
    (_manifest(("a", 100), ("a", 100), config=("c", 1)), set(), 101),  # a blob named twice is fetched once
    (_manifest(("a", 100), config=("a", 100)), set(), 100),
    (_manifest(("a", 100)), {f"sha256:{'z' * 64}"}, 100),  # unrelated blobs do not count
    (_manifest(), set(), 0),
])
def test_download_bytes(manifest: Manifest, present: set[str], expected: int) -> None:
    assert download_bytes(manifest, present) == expected


# --------------------------------------------------------------------------- HEAD /api/blobs/:digest

@pytest.fixture
def ollama() -> Iterator[OllamaStandin]:
    with OllamaStandin({"llama3.2:1b": 2_000}).start() as server:
        yield server
    assert server._handler_errors == []


def test_has_blob(ollama: OllamaStandin) -> None:
    server = OllamaServer(ollama.url, timeout=TIMEOUT)
    layer = ollama.layer_digests("llama3.2:1b")[0]
    assert server.has_blob(layer) is False
    ollama.install("llama3.2:1b")
    assert server.has_blob(layer) is True
    assert server.has_blob(layer.replace(":", "-", 1)) is True  # Ollama takes sha256-<hex> too
    assert server.has_blob(layer.upper().replace("SHA256", "sha256")) is False  # files are lowercase, the disk case-sensitive
    other = f"sha256:{'e' * 64}"
    assert server.has_blob(other) is False
    ollama.add_blob(other)
    assert server.has_blob(other) is True
    ollama.remove("llama3.2:1b")
    assert server.has_blob(layer) is False
    assert [r for r in ollama.requests if r[1].startswith("/api/blobs/")][0] == ("HEAD", f"/api/blobs/{layer}")


def test_has_blob_errors_map_like_the_other_calls(ollama: OllamaStandin) -> None:
    server = OllamaServer(ollama.url, timeout=TIMEOUT)
    with pytest.raises(ModelOperationFailed) as raised:
        server.has_blob("sha256:short")
    assert raised.value.status_code == 400 and "invalid digest format" in str(raised.value)
    ollama.stop()
    with pytest.raises(ServerUnreachable, match="not reachable"):
        server.has_blob(f"sha256:{'e' * 64}")


def test_the_blob_endpoint_answers_as_ollama_does(ollama: OllamaStandin) -> None:
    digest = f"sha256:{'e' * 64}"
    missing = httpx.head(f"{ollama.url}/api/blobs/{digest}", timeout=TIMEOUT)
    assert (missing.status_code, missing.content) == (404, b"")
    assert missing.headers["content-type"].startswith("application/json")
    ollama.add_blob(digest)
    present = httpx.head(f"{ollama.url}/api/blobs/{digest}", timeout=TIMEOUT)
    assert (present.status_code, present.content) == (200, b"")
    assert httpx.head(f"{ollama.url}/api/blobs/sha256:nothex", timeout=TIMEOUT).status_code == 400
    assert httpx.get(f"{ollama.url}/api/blobs/{digest}", timeout=TIMEOUT).status_code == 405


# --------------------------------------------------------------------------- a server that already holds some layers

def test_a_server_holding_some_layers_downloads_the_rest(registry: RegistryStandin, client: RegistryClient,
                                                         ollama: OllamaStandin) -> None:
    small, large = client.manifest("llama3.2:1b"), client.manifest("llama3.2:3b")
    assert isinstance(small, Manifest) and isinstance(large, Manifest)
    # The server pulled llama3.2:1b: it has every blob of it, and the tags share template and license.
    for blob in small.blobs:
        ollama.add_blob(blob.digest)
    server = OllamaServer(ollama.url, timeout=TIMEOUT)

    held = held_blobs(large, server)

    shared = {b.digest for b in small.blobs} & {b.digest for b in large.blobs}
    assert held == shared and len(shared) == 2
    assert download_bytes(large, held) == large.total_bytes - sum(b.size for b in large.blobs if b.digest in shared)
    assert held_blobs(small, server) == {b.digest for b in small.blobs}
    assert download_bytes(small, held_blobs(small, server) or set()) == 0
    asked = [path for method, path in ollama.requests if method == "HEAD"]
    assert asked[:len(large.blobs)] == [f"/api/blobs/{b.digest}" for b in large.blobs]
    ollama.stop()
    assert held_blobs(large, server) is None  # unreachable: the size is unknown, not "everything"


# --------------------------------------------------------------------------- the registry stand-in itself

def test_standin_manifest_head_get_and_errors(registry: RegistryStandin) -> None:
    url = f"{registry.url}/v2/library/llama3.2/manifests/1b"
    accept = {"Accept": MANIFEST_MEDIA_TYPE}
    get = httpx.get(url, headers=accept, timeout=TIMEOUT)
    head = httpx.head(url, headers=accept, timeout=TIMEOUT)
    assert get.status_code == head.status_code == 200
    assert head.content == b""
    for response in (get, head):
        assert response.headers["content-type"] == MANIFEST_MEDIA_TYPE
        assert response.headers["docker-content-digest"] == f"sha256:{_sha256(get.content)}"
        assert response.headers["docker-distribution-api-version"] == "registry/2.0"
        assert int(response.headers["content-length"]) == len(get.content)
    by_digest = httpx.get(f"{registry.url}/v2/library/llama3.2/manifests/{get.headers['docker-content-digest']}",
                          headers=accept, timeout=TIMEOUT)
    assert by_digest.content == get.content

    unknown = httpx.get(f"{registry.url}/v2/library/nosuch/manifests/1b", headers=accept, timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert unknown.json()["errors"][0]["message"] == "manifest unknown"
    not_accepted = httpx.get(url, headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=TIMEOUT)
    assert not_accepted.status_code == 404 and not_accepted.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert httpx.get(f"{registry.url}/v2/", timeout=TIMEOUT).json() == {}
    assert httpx.delete(url, timeout=TIMEOUT).status_code == 405
    assert httpx.get(f"{registry.url}/nope", timeout=TIMEOUT).status_code == 404


def test_standin_blobs(registry: RegistryStandin) -> None:
    layer = registry.layers("llama3.2:1b")[0]
    url = f"{registry.url}/v2/library/llama3.2/blobs/{layer['digest']}"
    get = httpx.get(url, timeout=TIMEOUT)
    assert get.status_code == 200 and f"sha256:{_sha256(get.content)}" == layer["digest"]
    assert len(get.content) == layer["size"]
    head = httpx.head(url, timeout=TIMEOUT)
    assert (head.status_code, head.content, int(head.headers["content-length"])) == (200, b"", layer["size"])
    part = httpx.get(url, headers={"Range": "bytes=10-19"}, timeout=TIMEOUT)
    assert part.status_code == 206 and part.content == get.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{layer['size']}"
    config = registry.config("llama3.2:1b")
    assert _sha256(httpx.get(f"{registry.url}/v2/library/llama3.2/blobs/{config['digest']}",
                             timeout=TIMEOUT).content) == config["digest"][7:]
    unknown = httpx.get(f"{registry.url}/v2/library/llama3.2/blobs/sha256:{'0' * 64}", timeout=TIMEOUT)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_standin_tags_move_and_share_layers(registry: RegistryStandin) -> None:
    before = registry.manifest_digest("llama3.2:1b")
    small, large = registry.layers("llama3.2:1b"), registry.layers("llama3.2:3b")
    assert {layer["digest"] for layer in small} & {layer["digest"] for layer in large} == {
        small[1]["digest"], small[2]["digest"]}  # template and license
    assert registry.add_model("llama3.2:1b", 21_000) != before
    assert registry.manifest_digest("llama3.2:1b") != before
    registry.add_model("custom:1", layers=[StandinBlob("application/vnd.ollama.image.model", b"weights")])
    assert registry.layers("custom:1") == [{"mediaType": "application/vnd.ollama.image.model",
                                            "digest": f"sha256:{_sha256(b'weights')}", "size": 7}]
    with pytest.raises(ValueError, match="too small"):
        registry.add_model("x:1", 10)


# --------------------------------------------------------------------------- GET /api/tags

def test_the_listing_is_every_model_by_its_normalised_reference(ollama: OllamaStandin) -> None:
    """Each `/api/tags` entry (with its `details` object) becomes an `InstalledModel` as it is decoded."""
    from ollama_gitops.reconciler.plan import InstalledModel

    ollama.add_to_catalogue("Qwen2.5:0.5b", 3_000)
    ollama.install("llama3.2:1b")
    ollama.install("Qwen2.5:0.5b")
    installed = OllamaServer(ollama.url, timeout=TIMEOUT).installed()
    raw = {m["model"]: m for m in httpx.get(f"{ollama.url}/api/tags", timeout=TIMEOUT).json()["models"]}
    assert set(installed) == {"llama3.2:1b", "qwen2.5:0.5b"} and set(raw) == {"llama3.2:1b", "Qwen2.5:0.5b"}
    assert all(isinstance(m, InstalledModel) for m in installed.values())
    qwen = installed["qwen2.5:0.5b"]
    modified = datetime.fromisoformat(raw["Qwen2.5:0.5b"]["modified_at"][:19] + "+00:00")  # the stand-in's is UTC
    assert (qwen.reference, qwen.size, qwen.digest, qwen.modified) == (
        "Qwen2.5:0.5b", 3_000, raw["Qwen2.5:0.5b"]["digest"], int(modified.timestamp()))
