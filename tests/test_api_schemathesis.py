"""Schema-driven fuzzing of the running API with schemathesis: requests generated from the OpenAPI
document the API serves (`/api/v1/openapi.json`), valid and invalid ones, sent over real HTTP to
`serve` in-process (tests/apirig.py) with the stand-in Ollama. Whatever is sent, with the API key
or without it, the answer is no 5xx and is what the document says: a documented status code, its
content type, and a body matching its schema.

The document is the API's contract: when this fails on an undocumented answer, either the server
or the document is wrong, and the failure shows the request (as a curl command) to decide which.
The hand-written properties of tests/test_api_fuzz.py go further on paths and bodies outside the
document; this test keeps the document honest.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)
from schemathesis.checks import not_a_server_error

from apirig import API_KEY, ApiRig
from ollama_gitops.api.app import _openapi_document
from webhooks import SECRET

SEEDED = [("llama3.2", "1b"), ("gemma3", "1b"), ("not-in-catalogue", "1b"),  # Ready, Ready, Failed
          ("qwen2.5", "0.5b"), ("phi3", "mini"), ("mistral", "7b")]
# Generated names almost never name a model: some requests name one, so that deletes and refreshes
# reach their 204 and 202 (each kind of write on models of its own, so deletes leave refreshes some).
KNOWN = {"DELETE": ["qwen2.5-0.5b", "phi3-mini", "mistral-7b"],
         "GET": ["llama3.2-1b", "gemma3-1b", "not-in-catalogue-1b", "qwen2.5-0.5b"],
         "POST": ["llama3.2-1b", "gemma3-1b", "not-in-catalogue-1b"]}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES = 25  # per operation (11), each sent three times: about 12 s here, alone


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory):
    """`serve` in-process once for the module, with webhooks on and Ready and Failed models."""
    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    with OllamaStandin(dict(CATALOGUE)) as ollama:
        rig = ApiRig(Path(tmp_path_factory.mktemp("schemathesis")), ollama, webhook_secret=SECRET)
        rig.seed(*SEEDED)
        rig.start()
        rig.settle()
        yield rig
        rig.stop()


# Generated from at collection, so one test per operation; the served bytes are checked to be these.
DOCUMENT = _openapi_document()
# The events stream never ends: tests/test_events.py tests it.
schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT)).exclude(path="/api/v1/events")


def test_the_fuzzed_document_is_the_served_one(fuzzed: ApiRig) -> None:
    assert fuzzed.client.get("/api/v1/openapi.json").content == DOCUMENT


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_answer_is_documented_and_none_is_a_5xx(case, fuzzed: ApiRig) -> None:
    name = (case.path_parameters or {}).get("name")
    known = KNOWN.get(case.method.upper())  # not for the methods the operation does not have
    if isinstance(name, str) and known:  # half of them, by a checksum, so that a failing case replays the same
        digest = zlib.crc32(name.encode("utf-8", "surrogatepass"))
        if digest % 2:
            case.path_parameters["name"] = known[digest // 2 % len(known)]
    # Each request three times: without the key and with a wrong one first (they change nothing),
    # then with the key.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}
    for key in (None, API_KEY + "x", API_KEY):
        headers = {"X-API-Key": key} if key is not None else {}
        case.call_and_validate(base_url=fuzzed.url, headers=headers, checks=CHECKS, timeout=60)
