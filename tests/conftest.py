"""Shared fixtures: real Git repositories in temporary directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# The suite's property tests draw the same examples on every run, so that CI is green or red for the
# code, not for the draw; what a wider search finds becomes an @example. To search anew:
# OLLAMA_GITOPS_HYPOTHESIS=explore pytest.
settings.register_profile("suite", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("OLLAMA_GITOPS_HYPOTHESIS", "suite"))

from gitrepos import WorkRepo, init_bare


@pytest.fixture
def work_repo(tmp_path: Path) -> WorkRepo:
    """An empty working repository on branch main."""
    return WorkRepo(tmp_path / "work")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """An empty bare repository (branch main) to push to and fetch from."""
    return init_bare(tmp_path / "remote.git")


@pytest.fixture
def ollama():
    """The stand-in Ollama server, with a catalogue of pullable models."""
    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    with OllamaStandin(dict(CATALOGUE)) as server:
        yield server


@pytest.fixture
def rig(tmp_path: Path, ollama):
    """A reconciler wired to a real bare remote and the stand-in Ollama."""
    from rig import Rig

    test_rig = Rig(tmp_path, ollama)
    yield test_rig
    test_rig.stop()
    test_rig.work.close()


@pytest.fixture
def api(tmp_path: Path, ollama):
    """`serve` in-process with an API key, over a remote seeded with llama3.2:1b and gemma3:1b."""
    from apirig import ApiRig

    rig = ApiRig(tmp_path, ollama)
    rig.seed(("llama3.2", "1b"), ("gemma3", "1b"))
    rig.start()
    yield rig
    rig.stop()


@pytest.fixture
def children(request: pytest.FixtureRequest, tmp_path: Path):
    """Child processes for the test (tests/processes.py): stopped at its end, their output added to
    the report when it fails."""
    from processes import Children

    started = Children(tmp_path / "children")
    request.node.stash[_CHILDREN] = started
    yield started
    killed = started.stop_all()
    assert not killed, f"ignored SIGTERM and were killed: {killed}\n{started.report()}"


_CHILDREN = pytest.StashKey["Children"]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A failed test's report ends with the tail of each child's output (the `children` fixture)."""
    report = yield
    started = item.stash.get(_CHILDREN, None)
    if started is not None and started.started and report.failed:
        report.sections.append((f"children's output ({report.when})", started.report()))
    return report
