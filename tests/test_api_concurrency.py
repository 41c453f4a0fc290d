"""Many writers at once: two real `ollama-gitops api` processes share one remote while a separate
clone keeps pushing to the same branch. Every acknowledged write must land, exactly once, and
nothing anyone pushed may be lost; one process under a burst of writes must answer every request."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.models.modelfile import ModelFields, parse
from ollama_gitops.reconciler.models.naming import resource_name
from processes import Children
from waiting import eventually

API_KEY = "concurrency-key-0123456789"
CLIENTS = 32
SEEDED = [(f"seed{i}", "1b") for i in range(8)]
DELETED = SEEDED[:3]      # deleted through the API (spread over both processes)
REFRESHED = SEEDED[3:6]   # refreshed through the API
CONTESTED = ("contested", "7b")  # POSTed to both processes at once
LISTENING = re.compile(r"API listening on (http://127\.0\.0\.1:\d+)")
START_DEADLINE = 90.0  # a ceiling for two processes starting at once on a loaded machine
CLIENT_TIMEOUT = 30.0  # a batch retried 8 times takes ~10 s; an answer this late means the API hangs


def _command() -> list[str]:
    script = Path(sys.executable).with_name("ollama-gitops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ollama_gitops"]


class ApiProcess:
    """`ollama-gitops api` as a child process (tests/processes.py); its URL is read from its log."""

    def __init__(self, children: Children, name: str, remote: Path, state_dir: Path) -> None:
        env = {**os.environ, "OLLAMA_GITOPS_API_KEY": API_KEY}
        for variable in ("OLLAMA_GITOPS_REPO", "OLLAMA_GITOPS_LISTEN", "OLLAMA_GITOPS_STATE_DIR"):
            env.pop(variable, None)
        self.child = children.start(name, [
            *_command(), "api", "--repo", str(remote), "--state-dir", str(state_dir),
            "--listen", "127.0.0.1:0", "--kubernetes", "off", "--interval", "3600"], env=env)
        self.url: str | None = None

    def wait_ready(self, deadline: float) -> str:
        """The URL once the process listens and answers /readiness 200."""
        self.url = self.child.wait_for(LISTENING, timeout=max(0.0, deadline - time.monotonic())).group(1)

        def ready() -> bool:
            assert self.child.poll() is None, f"exited with {self.child.poll()}:\n{self.text()}"
            try:
                return httpx.get(f"{self.url}/readiness", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        eventually(ready, timeout=max(0.0, deadline - time.monotonic()), what=f"{self.child.name} /readiness 200")
        return self.url

    def terminate(self) -> int:
        return self.child.terminate(timeout=60)

    def push_rejections(self) -> int:
        """Pushes this process had refused because the branch moved, from its log."""
        return self.child.stderr().count("action=push-rejected")

    def text(self) -> str:
        return self.child.tail(60)


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": "Outside", "GIT_AUTHOR_EMAIL": "o@example.com",
           "GIT_COMMITTER_NAME": "Outside", "GIT_COMMITTER_EMAIL": "o@example.com"}
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}{result.stdout}"
    return result


@dataclass
class OutsidePusher:
    """Someone pushing unrelated files to the same branch in a loop: pull --rebase, commit, push.

    It pushes as fast as it can while the API processes write, until `enough()` says each process
    has had pushes refused because of it (or has nothing left to write). It then stops, leaving the
    writers' remaining retries to land. (Against a pusher that never pauses, a writer's window
    between fetch and push is longer than this loop's period: it loses nearly every race and
    answers 503 after its 8 attempts.)
    """

    clone: Path
    enough: Callable[[], bool]
    stop: threading.Event = field(default_factory=threading.Event)
    pushed_files: list[str] = field(default_factory=list)
    successes: int = 0
    failures: int = 0
    error: BaseException | None = None

    def run(self) -> None:
        committed: list[str] = []
        index = 0
        try:
            # On stop, go on until three pushes have landed (the branch is quiet by then), so that
            # the history holds outside pushes however the race with the API processes went.
            while not (self.stop.is_set() and self.successes >= 3) and not (
                    self.successes >= 3 and not committed and self.enough()):
                pull = git(self.clone, "pull", "-q", "--rebase", "origin", "main", check=False)
                if pull.returncode != 0:
                    self.failures += 1
                    git(self.clone, "rebase", "--abort", check=False)
                    continue
                index += 1
                name = f"outside/change-{index:04d}.txt"
                (self.clone / "outside").mkdir(exist_ok=True)
                (self.clone / name).write_text(f"outside change {index}\n")
                git(self.clone, "add", name)
                git(self.clone, "commit", "-q", "-m", f"Outside change {index}")
                committed.append(name)
                if git(self.clone, "push", "-q", "origin", "HEAD:main", check=False).returncode == 0:
                    self.successes += 1
                    self.pushed_files.extend(committed)  # everything committed so far went with it
                    committed.clear()
                else:
                    self.failures += 1
        except BaseException as exc:  # reported by the test
            self.error = exc


@dataclass
class Outcome:
    label: str
    method: str
    url: str
    status: int | None = None
    body: str = ""
    error: str | None = None


def test_32_clients_two_processes_and_an_outside_pusher_lose_nothing(tmp_path: Path, children: Children) -> None:
    remote = init_bare(tmp_path / "remote.git")
    seed = WorkRepo(tmp_path / "seed", remote=remote)
    for name, tag in SEEDED:
        seed.model("default", name, tag)
    seed.write("README.md", "models\n")
    seed.commit("seed")
    seed.push()

    processes = [ApiProcess(children, f"api-{i}", remote, tmp_path / f"state-{i}") for i in range(2)]
    pusher: OutsidePusher | None = None
    pusher_thread: threading.Thread | None = None
    try:
        deadline = time.monotonic() + START_DEADLINE
        urls = [p.wait_ready(deadline) for p in processes]

        requests: list[tuple[Outcome, dict | None]] = []
        created = [(f"conc-model-{i:02d}", "q4") for i in range(CLIENTS)]
        for i, (name, tag) in enumerate(created):
            requests.append((Outcome(f"create {name}:{tag}", "POST", f"{urls[i % 2]}/api/v1/models"),
                             {"name": name, "tag": tag}))
        for i, (name, tag) in enumerate(DELETED):
            requests.append((Outcome(f"delete {name}:{tag}", "DELETE",
                                     f"{urls[i % 2]}/api/v1/models/{resource_name(name, tag)}"), None))
        for i, (name, tag) in enumerate(REFRESHED):
            requests.append((Outcome(f"refresh {name}:{tag}", "POST",
                                     f"{urls[(i + 1) % 2]}/api/v1/models/{resource_name(name, tag)}/refresh"), None))
        contested_body = {"name": CONTESTED[0], "tag": CONTESTED[1]}
        contested = [Outcome(f"contested via {i}", "POST", f"{urls[i]}/api/v1/models") for i in range(2)]
        requests += [(outcome, contested_body) for outcome in contested]

        outcomes = [outcome for outcome, _ in requests]

        def enough() -> bool:
            """Each process has had pushes refused by the outside pushes, or has nothing left to write."""
            return all(process.push_rejections() >= 2 or all(o.status is not None or o.error is not None
                                                               for o in outcomes if o.url.startswith(url + "/"))
                       for process, url in zip(processes, urls))

        git(tmp_path, "clone", "-q", str(remote), str(tmp_path / "outside"))
        pusher = OutsidePusher(tmp_path / "outside", enough)
        pusher_thread = threading.Thread(target=pusher.run, daemon=True)
        barrier = threading.Barrier(len(requests) + 1)

        def client(outcome: Outcome, body: dict | None) -> None:
            with httpx.Client(headers={"X-API-Key": API_KEY}, timeout=CLIENT_TIMEOUT) as http:
                barrier.wait()
                try:
                    response = http.request(outcome.method, outcome.url, json=body)
                    outcome.status, outcome.body = response.status_code, response.text
                except httpx.HTTPError as exc:
                    outcome.error = repr(exc)

        threads = [threading.Thread(target=client, args=item, daemon=True) for item in requests]
        for thread in threads:
            thread.start()
        pusher_thread.start()
        barrier.wait()  # every client fires at once, with the outside pusher already going
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT + 30)
            assert not thread.is_alive(), "a client never got an answer"
        pusher.stop.set()
        pusher_thread.join(timeout=60)
        assert not pusher_thread.is_alive(), "the outside pusher never finished"
        assert pusher.error is None, repr(pusher.error)

        report = "\n".join(f"{o.label}: {o.status} {o.body.strip()[:200]} {o.error or ''}" for o in outcomes)
        assert all(o.error is None for o in outcomes), report
        assert all(o.status is not None and o.status < 500 for o in outcomes), report + "\n" + processes[0].text() + processes[1].text()

        # Each creation and delete is uncontested: it must be acknowledged, not merely not lost.
        creates = outcomes[:CLIENTS]
        deletes = outcomes[CLIENTS:CLIENTS + len(DELETED)]
        refreshes = outcomes[CLIENTS + len(DELETED):CLIENTS + len(DELETED) + len(REFRESHED)]
        assert [o.status for o in creates] == [201] * CLIENTS, report
        assert [o.status for o in deletes] == [204] * len(DELETED), report
        assert [o.status for o in refreshes] == [202] * len(REFRESHED), report
        assert all(o.body == "" for o in deletes)
        assert sorted(o.status for o in contested) == [201, 409], report
        loser = next(o for o in contested if o.status == 409)
        assert json.loads(loser.body) == {"error": f"model already exists: {resource_name(*CONTESTED)}"}

        # The final remote tree.
        assert git(remote, "fsck", "--full", "--strict", "--no-dangling").returncode == 0
        files = git(remote, "ls-tree", "-r", "--name-only", "main").stdout.split()
        model_files = [f for f in files if f.startswith("models/")]
        stems = Counter(re.sub(r"\.ya?ml$", "", f) for f in model_files)
        assert [s for s, n in stems.items() if n > 1] == [], "several files for one model"
        assert all(f.endswith((".yaml", ".yml")) and f.count("/") == 2 for f in model_files), model_files

        def content(path: str) -> str | None:
            shown = git(remote, "show", f"main:{path}", check=False)
            return shown.stdout if shown.returncode == 0 else None

        acknowledged_created = [*created, CONTESTED]
        for name, tag in acknowledged_created:
            text = content(f"models/default/{resource_name(name, tag)}.yaml")
            assert text is not None, f"acknowledged create of {name}:{tag} is not in the tree"
            assert parse(text.encode()) == ModelFields(name, tag)
        for name, tag in DELETED:
            assert content(f"models/default/{resource_name(name, tag)}.yaml") is None, f"{name}:{tag} came back"
        for name, tag in REFRESHED:
            fields = parse(content(f"models/default/{resource_name(name, tag)}.yaml").encode())
            assert isinstance(fields, ModelFields) and fields.refresh_requested_at is not None
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", fields.refresh_requested_at)
        for path in model_files:  # every file still describes the model its name says
            fields = parse(content(path).encode())
            assert isinstance(fields, ModelFields) and path == f"models/default/{resource_name(fields.name, fields.tag)}.yaml", path
        for name, tag in SEEDED[6:]:  # untouched
            assert parse(content(f"models/default/{resource_name(name, tag)}.yaml").encode()) == ModelFields(name, tag)
        assert len(model_files) == len(SEEDED) + len(acknowledged_created) - len(DELETED)
        assert content("README.md") == "models\n"

        assert pusher.successes >= 3
        for path in pusher.pushed_files:
            assert content(path) is not None, f"the outside push of {path} was lost"

        # Every acknowledged write's commit is in the history of the final head, once.
        expected = ([f"Add model {n}:{t}" for n, t in acknowledged_created]
                    + [f"Delete model {n}:{t}" for n, t in DELETED]
                    + [f"Refresh model {n}:{t}" for n, t in REFRESHED])
        seen: Counter[str] = Counter()
        subjects = []
        for commit in git(remote, "rev-list", "main").stdout.split():
            message = git(remote, "log", "-1", "--format=%B", commit).stdout.splitlines()
            subjects.append(message[0])
            listed = [line[2:] for line in message if line.startswith("- ")]
            if listed:  # a batch: the subject names its first change and how many more
                assert message[0] == f"{listed[0]} and {len(listed) - 1} more change{'s' if len(listed) > 2 else ''}"
            seen.update(listed or message[:1])
        assert {line: seen[line] for line in expected} == {line: 1 for line in expected}, subjects
        # nothing but these writes, the outside pushes and the seed is in the history
        assert {line for line in seen if not line.startswith("Outside change ")} == set(expected) | {"seed"}
        assert sum(seen[line] for line in seen if line.startswith("Outside change ")) >= pusher.successes

        # The fetch-and-re-apply path was taken (a process may finish its writes before the outside
        # pusher gets in its way, so this counts both together).
        assert sum(process.push_rejections() for process in processes) >= 2

        codes = [p.terminate() for p in processes]
        assert codes == [0, 0], processes[0].text() + processes[1].text()
    finally:
        if pusher is not None:
            pusher.stop.set()
        if pusher_thread is not None and pusher_thread.is_alive():
            pusher_thread.join(timeout=30)


def test_concurrent_refreshes_and_creates_in_one_process_all_answer_and_keep_each_file_its_own(
        tmp_path: Path, children: Children) -> None:
    """Writes read model files (refresh, delete) while request threads load the new head: each
    answer must come, be a success, and every file must still describe the model its name says."""
    remote = init_bare(tmp_path / "remote.git")
    seed = WorkRepo(tmp_path / "seed", remote=remote)
    models = [(f"seed{i}", "1b") for i in range(24)]
    for name, tag in models:
        seed.model("default", name, tag)
    seed.commit("seed")
    seed.push()
    process = ApiProcess(children, "api", remote, tmp_path / "state")
    url = process.wait_ready(time.monotonic() + START_DEADLINE)
    answers: list[tuple[str, int | str]] = []

    def call(method: str, path: str, body: dict | None) -> None:
        try:
            response = httpx.request(method, url + path, json=body, headers={"X-API-Key": API_KEY}, timeout=20)
            answers.append((f"{method} {path}", response.status_code))
        except httpx.HTTPError as exc:
            answers.append((f"{method} {path}", repr(exc)))

    for round_ in range(2):
        calls = [("POST", f"/api/v1/models/{resource_name(n, t)}/refresh", None) for n, t in models]
        calls += [("POST", "/api/v1/models", {"name": f"new{round_}x{i}", "tag": "1b"}) for i in range(len(models))]
        threads = [threading.Thread(target=call, args=c, daemon=True) for c in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        failed = [a for a in answers if a[1] not in (201, 202)]
        assert failed == [], f"round {round_}: {len(failed)} of {len(answers)} failed: {failed[:10]}\n{process.text()}"

    for path in git(remote, "ls-tree", "-r", "--name-only", "main").stdout.split():
        fields = parse(git(remote, "show", f"main:{path}").stdout.encode())
        assert isinstance(fields, ModelFields), path
        assert path == f"models/default/{resource_name(fields.name, fields.tag)}.yaml", \
            f"{path} now describes {fields.name}:{fields.tag}"
    assert process.terminate() == 0
