"""Property-based fuzzing of the running API: whatever is sent, no 5xx, errors in the documented
form, and every successful JSON answer as the OpenAPI document describes it.

Requests go out through `http.client` so that paths reach the server exactly as generated (httpx
would normalise `..` segments away).
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import jsonschema
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from apirig import API_KEY, ApiRig
from ollama_gitops.api import dashboard

OPEN_PATHS = {"/health", "/readiness", "/metrics"}
SEEDED = [("llama3.2", "1b"), ("gemma3", "1b"), ("not-in-catalogue", "1b")]  # the last one fails to pull
KNOWN_NAMES = ["llama3.2-1b", "gemma3-1b", "not-in-catalogue-1b"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`serve` in-process once for the module, with Ready, Failed and Pending models to show."""
    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    with OllamaStandin(dict(CATALOGUE)) as ollama:
        rig = ApiRig(Path(tmp_path_factory.mktemp("fuzz")), ollama)
        rig.seed(*SEEDED)
        rig.start()
        rig.settle()
        document = rig.client.get("/api/v1/openapi.json").json()
        yield rig, document
        rig.stop()


# -- what is sent --------------------------------------------------------------------------------------

EDGE_SUFFIXES = ["", "\n", "\r\n", " ", "\t", "\x00", "/", "..", "%", "\u00e9", "\u202e", "\ud7ff", "\U0001f600"]
NEAR_MISS_EDGES = ["\n", "\n", "\r\n", "\r", " ", "\t", "\x00", "\x0b", "/", ".", "-", "_", "\u00e9", "\U0001f600"]

dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
namespace_values = st.one_of(
    dns_label,
    st.builds(lambda label, suffix: label + suffix, dns_label, st.sampled_from(EDGE_SUFFIXES)),
    st.sampled_from(["", "default", "..", "../x", "a" * 64, "a" * 63, "A", "-a", "a-", "a.b", "kube-system"]),
    st.text(max_size=30),
    st.text(min_size=200, max_size=2000),
)

segments = st.one_of(
    st.sampled_from(KNOWN_NAMES),
    st.sampled_from(["", ".", "..", "%2e%2e", "%2F", "..%2F..%2Fetc%2Fpasswd", "%00", "%ff%fe", "%", "%zz",
                     "a%0A", "llama3.2-1b%0A", "UPPER", ".hidden", "a..b", "-a", "a-", "x" * 253, "x" * 254]),
    st.builds(lambda label, suffix: label + suffix, dns_label, st.sampled_from(EDGE_SUFFIXES)),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=300, max_size=5000),
)

ROUTES = [
    "/api/v1/models", "/api/v1/models/{}", "/api/v1/models/{}/refresh", "/api/v1/status",
    "/api/v1/openapi.json", "/health", "/readiness", "/metrics", "/api/v1/models/{}/{}", "/api/v1/{}",
    "/api/{}", "/{}", "/", "/api", "/api/", "/api/v1", "/api/v2/models", "/api/v1/models/{}/refresh/{}",
]


def _segment(text: str) -> str:
    """A path segment as sent: percent escapes written into the text are kept literally."""
    return quote(text, safe="%.-_~!$&'()*+,;=:@")


@st.composite
def targets(draw: st.DrawFn) -> str:
    route = draw(st.sampled_from(ROUTES))
    path = route
    while "{}" in path:
        path = path.replace("{}", _segment(draw(segments)), 1)
    if draw(st.booleans()) and draw(st.booleans()):
        path += draw(st.sampled_from(["/", "//", "/..", "/.", "/extra", "%2F"]))
    params: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["namespace", "namespace", "ns", "name", "", "namespace[]"]))
        value = draw(namespace_values)
        params.append(f"{quote(key, safe='')}={quote(value, safe='')}" if draw(st.booleans()) else
                      f"{key}={_segment(value)}")
    if params or draw(st.booleans()):
        path += "?" + "&".join(params)
    return path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
model_names = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,12}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,6}/[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    st.builds(lambda label, suffix: label + suffix, st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
              st.sampled_from(EDGE_SUFFIXES)),
    st.sampled_from(["llama3.2", "gemma3", "hf.co/bartowski/Llama-3.2-1B-GGUF", "../../etc", "a/", "/a", "-a",
                     "a" * 201, "a" * 200]),
    st.text(max_size=20),
)
tag_values = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}", fullmatch=True),
    st.builds(lambda tag, suffix: tag + suffix, st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
              st.sampled_from(EDGE_SUFFIXES)),
    st.sampled_from(["1b", "latest", "Q4_K_M", "_x", "t" * 128, "t" * 129, "1.10"]),
    st.text(max_size=12),
)
label_maps = st.dictionaries(st.one_of(dns_label, st.text(max_size=12), st.just("example.com/team")),
                             st.one_of(st.text(max_size=12), dns_label, st.integers(), st.none()), max_size=3)
timestamps = st.one_of(
    st.sampled_from(["2026-11-25T14:00:00Z", "2026-02-30T00:00:00Z", "2026-11-25T14:00:00.123456789+01:00",
                     "2026-11-25 14:00:00z", "tomorrow", "", "2026-11-25T14:00:00Z\n", "9999-12-31T23:59:60Z"]),
    st.text(max_size=25),
)
FIELD_VALUES = {
    "name": model_names, "tag": tag_values, "labels": label_maps, "annotations": label_maps,
    "suspend": st.one_of(st.booleans(), json_values), "prune": st.one_of(st.booleans(), json_values),
    "refreshRequestedAt": timestamps,
}


valid_documents = st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z][a-z0-9]{0,10}(/[a-z0-9][a-z0-9._-]{0,8})?", fullmatch=True),
     "tag": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}", fullmatch=True)},
    optional={"labels": st.dictionaries(dns_label, dns_label, max_size=2),
              "annotations": st.dictionaries(dns_label, st.text(max_size=20), max_size=2),
              "suspend": st.booleans(), "prune": st.booleans(),
              "refreshRequestedAt": st.sampled_from(["2026-11-25T14:00:00Z", "2026-01-01T00:00:00.5+02:00"])},
)

near_miss_documents = st.builds(  # a valid document with one edge character at the start or end of a field
    lambda doc, field, edge, at_end: {**doc, field: doc[field] + edge if at_end else edge + doc[field]},
    valid_documents, st.sampled_from(["name", "tag"]), st.sampled_from(NEAR_MISS_EDGES), st.booleans())
near_miss_labels = st.builds(lambda label, edge, at_end: label + edge if at_end else edge + label,
                             dns_label, st.sampled_from(NEAR_MISS_EDGES), st.booleans())


@st.composite
def model_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies built from the model schema's fields: valid half the time, else with random types and values."""
    if draw(st.booleans()):
        return draw(valid_documents)
    document: dict[str, Any] = {}
    for field, values in FIELD_VALUES.items():
        required = field in ("name", "tag")
        if draw(st.booleans()) if not required else draw(st.integers(0, 9)) > 0:
            document[field] = draw(values) if draw(st.integers(0, 4)) > 0 else draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        document[draw(st.sampled_from(["namespace", "sus", "Name", "tags", "", "refreshrequestedat"]))] = draw(json_values)
    return document


bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    json_values.map(lambda v: json.dumps(v).encode()),
    model_documents().map(lambda d: json.dumps(d).encode()),
    model_documents().map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8")),
    model_documents().map(lambda d: json.dumps(d)[:-1].encode()),  # truncated
    st.sampled_from([b"", b"null", b"{}", b"[]", b"\xef\xbb\xbf{}", b'{"name": "a", "name": "b", "tag": "c"}',
                     b"{" + b" " * 70_000 + b"}", b'{"name": "x", "tag": "y"}' + b" " * 65_600,
                     b'{"name": NaN, "tag": Infinity}', b'{"name": "\\ud800", "tag": "1b"}', b"\xff\xfe"]),
)
api_keys = st.one_of(
    st.just(API_KEY), st.just(API_KEY), st.just(API_KEY), st.none(),
    st.sampled_from(["", API_KEY + "x", API_KEY[:-1], API_KEY.upper(), " " + API_KEY, API_KEY + "\u00e9"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40),
)
content_types = st.sampled_from([None, "application/json", "application/json", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
                                 "application/json; charset=latin-1", "application/merge-patch+json"])
methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "GET", "POST", "DELETE", "HEAD", "OPTIONS"])
OPERATIONS = [("GET", "/api/v1/models"), ("POST", "/api/v1/models"), ("POST", "/api/v1/models"),
              ("POST", "/api/v1/models"), ("GET", "/api/v1/models/{}"), ("DELETE", "/api/v1/models/{}"),
              ("POST", "/api/v1/models/{}/refresh"), ("POST", "/api/v1/models/{}/refresh"), ("GET", "/api/v1/status")]
plausible_names = st.one_of(st.sampled_from(KNOWN_NAMES), dns_label, segments)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, str | None, str | None]:
    """(method, target, body, key, content type): two thirds of them the documented operations with
    the right key and a plausible body and namespace, the rest anything at all."""
    if draw(st.integers(0, 2)) == 0:
        return draw(methods), draw(targets()), draw(bodies), draw(api_keys), draw(content_types)
    method, route = draw(st.sampled_from(OPERATIONS))
    target = route.replace("{}", _segment(draw(plausible_names)))
    if draw(st.integers(0, 2)) == 0:
        namespace = draw(st.one_of(st.sampled_from(["default", "team-a"]), dns_label, near_miss_labels,
                                   near_miss_labels, namespace_values))
        target += "?namespace=" + quote(namespace, safe="")
    body = None
    if route == "/api/v1/models" and method == "POST":
        body = draw(st.one_of(valid_documents, valid_documents, near_miss_documents, near_miss_documents,
                              model_documents(), json_values).map(
            lambda d: json.dumps(d).encode()) | bodies)
    elif draw(st.integers(0, 4)) == 0:
        body = draw(bodies)
    key = API_KEY if draw(st.integers(0, 9)) > 0 else draw(api_keys)
    content_type = "application/json" if draw(st.booleans()) else draw(content_types)
    return method, target, body, key, content_type


def send(url: str, method: str, target: str, body: bytes | None, key: str | None, content_type: str | None):
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        if key is not None:
            connection.putheader("X-API-Key", key.encode("latin-1"))
        if content_type is not None:
            connection.putheader("Content-Type", content_type)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


# -- what must hold ------------------------------------------------------------------------------------

ROUTE_SCHEMAS = [  # (method, decoded path pattern, 2xx status, schema)
    ("GET", re.compile(r"/api/v1/models"), 200, "ModelList"),
    ("GET", re.compile(r"/api/v1/history"), 200, "History"),
    ("POST", re.compile(r"/api/v1/models"), 201, "Model"),
    ("GET", re.compile(r"/api/v1/models/[^/]+"), 200, "Model"),
    ("POST", re.compile(r"/api/v1/models/[^/]+/refresh"), 202, "Model"),
    ("GET", re.compile(r"/api/v1/status"), 200, "Status"),
]


def validate(document: dict, schema_name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(request=requests())
# Python's `$` also matches before a final newline: the classic way past an anchored pattern.
@example(request=("POST", "/api/v1/models?namespace=team-a%0A", b'{"name": "phi3", "tag": "mini"}', API_KEY, None))
@example(request=("POST", "/api/v1/models", b'{"name": "phi3\\n", "tag": "mini"}', API_KEY, "application/json"))
@example(request=("GET", "/api/v1/models?namespace=default%0A", None, API_KEY, None))
@example(request=("DELETE", "/api/v1/models/gemma3-1b%0A", None, API_KEY, None))
@example(request=("POST", "/api/v1/models/..%2F..%2Fetc%2Fpasswd/refresh", None, API_KEY, None))
@example(request=("GET", "/api/v1/models/../../etc/passwd", None, API_KEY, None))
@example(request=("PUT", "/api/v1/models/llama3.2-1b", b'{"name": "x", "tag": "y"}', "wrong", "application/json"))
@example(request=("GET", "//", None, None, None))
@example(request=("GET", "//api/v1/models", None, None, None))
def test_no_request_gets_a_5xx_and_every_answer_has_the_documented_form(server, request) -> None:
    rig, document = server
    method, target, body, key, content_type = request
    status, media_type, payload = send(rig.url, method, target, body, key, content_type)
    seen = f"{method} {target[:300]!r} body={body[:200] if body else body!r} key={key!r} -> {status} {payload[:300]!r}"

    event(f"{method} {status}")
    assert status < 500, seen
    path = unquote(target.split("?", 1)[0], errors="replace")
    # Werkzeug's request.path, which the key check reads: leading slashes are one ('//' is the page).
    path = "/" + path.lstrip("/") if path.startswith("/") else path
    if status == 401 and method != "HEAD":
        assert payload == b"Unauthorized\n", seen
    if key is not None and key.strip(" \t") == API_KEY:  # HTTP drops whitespace around a header value
        assert status != 401, seen
    elif path not in OPEN_PATHS and not dashboard.is_open(path):  # open without the key, as the server decodes them
        assert status == 401, seen
    under_api = path.startswith("/api/")
    if under_api and status >= 400 and status != 401 and method != "HEAD":
        assert media_type == "application/json", seen
        error = json.loads(payload)
        assert isinstance(error, dict) and list(error) == ["error"] and isinstance(error["error"], str), seen
    if status == 204:
        assert payload == b"", seen
    if 200 <= status < 300 and under_api and method in ("GET", "POST"):
        assert media_type == "application/json", seen
        answer = json.loads(payload)
        if path == "/api/v1/openapi.json":
            assert answer["openapi"].startswith("3.1"), seen
            return
        matches = [(expected, schema) for m, pattern, expected, schema in ROUTE_SCHEMAS
                   if m == method and pattern.fullmatch(path)]
        assert matches, f"a {status} from no documented route: {seen}"
        expected, schema = matches[0]
        assert status == expected, seen
        try:
            validate(document, schema, answer)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{seen}\nnot a {schema}: {exc.message}") from None
        if status == 201:
            check_created(rig, document, json.loads(body), target, answer, seen)


def anchored(pattern: str, value: str) -> bool:
    """A JSON Schema `pattern` as JSON Schema means it: ECMA-262, where `$` is the end of the input
    (Python's `$` also matches before a final newline)."""
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, value) is not None


def check_created(rig: ApiRig, document: dict, sent: dict, target: str, answer: dict, seen: str) -> None:
    """A 201 is for a body the model file schema allows, and the model reads back as created."""
    properties = document["components"]["schemas"]["ModelFile"]["properties"]
    for field in ("name", "tag"):
        assert anchored(properties[field]["pattern"], sent[field]), \
            f"{field} {sent[field]!r} is outside the schema's pattern {properties[field]['pattern']}: {seen}"
    assert (answer["modelName"], answer["tag"], answer["state"]) == (sent["name"], sent["tag"], "Pending"), seen
    namespace = next((v for k, v in parse_qsl(urlsplit(target).query, keep_blank_values=True) if k == "namespace"), "")
    assert answer["namespace"] == (namespace or "default"), seen
    again = rig.client.get(f"/api/v1/models/{answer['name']}", params={"namespace": answer["namespace"]})
    assert again.status_code == 200 and again.json()["modelName"] == sent["name"], seen
