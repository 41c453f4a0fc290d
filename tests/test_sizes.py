import pytest

from ollama_gitops.reconciler.models.sizes import format_size


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
        (815319791, "777.5 MiB"), (1815319791, "1.7 GiB"), (4113301824, "3.8 GiB"),
        (1024**2 - 1, "1024.0 KiB"), (1024**4, "1.0 TiB"), (5 * 1024**5, "5.0 PiB"), (1024**6, "1.0 EiB"),
    ],
)
def test_format_size_matches_the_seed(size: int, text: str) -> None:
    assert format_size(size) == text
