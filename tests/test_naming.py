"""Model references compared as Ollama compares them (ollama/ollama v0.13.5, types/model/name.go):
ParseName fills the default host `registry.ollama.ai`, namespace `library` and tag `latest`,
`/api/tags` lists a model by its DisplayShortest form, and names are equal when EqualFold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gitops.reconciler.models.naming import normalize_reference, parse_name

SAME_AS_LLAMA = ("llama3.2", "llama3.2:latest", "library/llama3.2", "library/llama3.2:latest",
                 "registry.ollama.ai/library/llama3.2", "registry.ollama.ai/library/llama3.2:latest",
                 "Registry.Ollama.AI/Library/Llama3.2:LATEST", "https://registry.ollama.ai/library/llama3.2")


@pytest.mark.parametrize("reference", SAME_AS_LLAMA)
def test_every_spelling_of_a_library_model_is_one_key(reference: str) -> None:
    assert normalize_reference(reference) == "llama3.2:latest"


@pytest.mark.parametrize(("reference", "key"), [
    # name_test.go's TestDisplayShortest cases
    ("registry.ollama.ai/library/model:latest", "model:latest"),
    ("registry.ollama.ai/library/model:tag", "model:tag"),
    ("registry.ollama.ai/namespace/model:tag", "namespace/model:tag"),
    ("host/namespace/model:tag", "host/namespace/model:tag"),
    ("host/library/model:tag", "host/library/model:tag"),
    # other hosts keep their host, and a port is not a tag
    ("hf.co/x/y:q4", "hf.co/x/y:q4"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m"),
    ("myhost:5000/ns/m:t", "myhost:5000/ns/m:t"),
    ("myhost:5000/ns/m", "myhost:5000/ns/m:latest"),
    ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
    ("library/llama3.2:1b", "llama3.2:1b"),
    ("me/llama3.2:1b", "me/llama3.2:1b"),
])
def test_keys_are_ollamas_shortest_form_compared_case_insensitively(reference: str, key: str) -> None:
    assert normalize_reference(reference) == key


def test_parse_name_fills_ollamas_defaults() -> None:
    name = parse_name("llama3.2")
    assert (name.host, name.namespace, name.model, name.tag) == ("registry.ollama.ai", "library", "llama3.2", "latest")
    name = parse_name("https://myhost:5000/ns/m:t")
    assert (name.host, name.namespace, name.model, name.tag) == ("myhost:5000", "ns", "m", "t")
    assert name.display_shortest() == "myhost:5000/ns/m:t"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ9.:-_/", max_size=12))
def test_a_reference_is_keyed_as_parse_name_reads_it(reference: str) -> None:
    assert normalize_reference(reference) == parse_name(reference).display_shortest().lower()


def test_bare_references_are_keyed_without_a_cache_that_a_hundred_thousand_would_overflow() -> None:
    from ollama_gitops.reconciler.models import naming

    before = naming._parsed_reference.cache_info()
    assert [normalize_reference(f"Model{i}:1B") for i in range(3)] == ["model0:1b", "model1:1b", "model2:1b"]
    assert normalize_reference("llama3.2") == "llama3.2:latest" and normalize_reference("a:") == "a:!missing!"
    assert naming._parsed_reference.cache_info() == before  # neither looked up nor stored there


@pytest.mark.parametrize("reference", [
    "model1:1b", "Model1:1B", "llama3.2:latest", "a:b:c", "x:", ":y", ":", "", "noTag", "ns/m:t", "ünï:CÖDE",
    "m:t/x", "123:456", "model:Q4_K_M", "host:5000/m",
])
def test_the_quick_form_of_a_reference_is_what_parsing_it_gives(reference: str) -> None:
    # The one-part references skip the parse: they must come out as parsing them does.
    assert normalize_reference(reference) == parse_name(reference).display_shortest().lower()


def test_a_reference_in_normal_form_is_its_own_key_and_nothing_is_kept_for_it() -> None:
    from ollama_gitops.reconciler.models import naming

    naming._parsed_reference.cache_clear()
    references = [f"model{i}:1b" for i in range(20_000)]
    assert all(normalize_reference(r) is r for r in references)
    assert naming._parsed_reference.cache_info().currsize == 0
    # The others are cached, at most NORMALIZED_CACHE of them however many there are.
    for i in range(naming.NORMALIZED_CACHE + 500):
        assert normalize_reference(f"hf.co/x/m{i}") == f"hf.co/x/m{i}:latest"
    assert naming._parsed_reference.cache_info().currsize == naming.NORMALIZED_CACHE
