"""Issue 13: what a merge would do. `GET /api/v1/plan?ref=REF` on the real service (serve in-process,
the stand-in Ollama and registry on loopback) with a branch that adds, removes, moves and breaks
files; `ollama-gitops plan` and its exit codes; nothing pulled, deleted or written meanwhile."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from apirig import API_KEY, ApiRig
from rig import CATALOGUE
from ollama_gitops.api.cli import main
from ollama_gitops.reconciler.git.repo import GitRepo
from standins.ollama_server import OllamaStandin
from standins.registry import RegistryStandin

REGISTRY = {"phi3:mini": 50_000, "llama3.2:1b": 40_000, "qwen2.5:0.5b": 30_000}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[ApiRig, OllamaStandin, RegistryStandin]]:
    """serve with four models Ready (pulled by it), one of them `prune: false`."""
    with OllamaStandin(dict(CATALOGUE)) as ollama, RegistryStandin(REGISTRY) as registry:
        rig = ApiRig(tmp_path, ollama, registry_url=registry.url)
        rig.work.model("default", "llama3.2", "1b")
        rig.work.model("default", "gemma3", "1b")
        rig.work.model("default", "qwen2.5", "0.5b", "prune: false\n")
        rig.work.model("default", "mistral", "7b")
        rig.work.commit("seed")
        rig.work.push()
        rig.start()
        rig.settle()
        # A pull records no digest (its stream has none): a resync's listing gives them, which the
        # moved-tag check compares with the registry's.
        assert rig.running.service.reconciler.run_cycle(full=True).full
        try:
            yield rig, ollama, registry
        finally:
            rig.stop()


def branch(rig: ApiRig, name: str, change) -> str:  # type: ignore[no-untyped-def]
    """Commit `change(work)` on a new branch from main and push it; the work tree goes back to main."""
    work = rig.work
    work.repo.git.checkout("-q", "-B", name, "main")
    change(work)
    commit = work.commit(name)
    work.push(name)
    work.repo.git.checkout("-q", "main")
    return commit


def the_pr(work) -> None:  # type: ignore[no-untyped-def]
    work.model("default", "phi3", "mini")                    # added
    work.remove("models/default/gemma3-1b.yaml")             # removed: deleted (ollama-gitops pulled it)
    work.remove("models/default/qwen2.5-0.5b.yaml")          # removed, prune: false: kept
    work.remove("models/default/mistral-7b.yaml")            # moved to another namespace
    work.model("team-a", "mistral", "7b")
    work.write("models/default/llama3.2-1b.yaml", "name: llama3.2\ntag: \"1b\"\nbogus: 1\n")  # broken


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def state_files(rig: ApiRig) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in rig.state_dir.iterdir() if p.is_file() and p.suffix in (".json", ".journal")}


def refs(git_dir: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(refname) %(objectname)",
                           "refs/heads", "refs/remotes"], capture_output=True, text=True, check=True).stdout


def test_a_branch_that_adds_removes_moves_and_breaks_files_is_planned_and_nothing_changes(service, monkeypatch) -> None:
    rig, ollama, registry = service
    head = rig.work.repo.head.commit.hexsha
    commit = branch(rig, "my-pr", the_pr)
    phi3 = registry.layers("phi3:mini")
    ollama.add_blob(phi3[1]["digest"])  # a layer it shares with a model already there
    before_state, before_requests = state_files(rig), len(ollama.requests)
    before_refs = {p: refs(p) for p in (rig.remote, rig.state_dir / "api.git", rig.state_dir / "clone.git")}

    answer = rig.client.get("/api/v1/plan", params={"ref": "my-pr"})

    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert (plan["ref"], plan["commit"], plan["base"]) == ("my-pr", commit, head)
    total = sum(b["size"] for b in phi3) + registry.config("phi3:mini")["size"]
    assert [(a["action"], a["model"], a["reference"], a.get("downloadBytes")) for a in plan["actions"]] == [
        ("delete", "default/gemma3-1b", "gemma3:1b", None),
        ("keep", "default/llama3.2-1b", "llama3.2:1b", None),
        ("pull", "default/phi3-mini", "phi3:mini", total - phi3[1]["size"]),
        ("keep", "default/qwen2.5-0.5b", "qwen2.5:0.5b", None),
        ("move", "team-a/mistral-7b", "mistral:7b", None),
    ]
    reasons = {a["model"]: a["reason"] for a in plan["actions"]}
    assert reasons["default/qwen2.5-0.5b"] == "file removed; prune: false keeps the weights"
    assert reasons["default/llama3.2-1b"].startswith("model file is invalid, keeping the last good version")
    assert {a["server"] for a in plan["actions"]} == {"default"}
    (problem,) = plan["problems"]
    assert (problem["path"], problem["line"]) == ("models/default/llama3.2-1b.yaml", 3)
    assert problem["message"].startswith("unknown field 'bogus'")
    (server,) = plan["servers"]
    assert (server["name"], server["observed"], server["pulls"], server["deletes"], server["downloadBytes"]) == \
        ("default", "listing", 1, 1, total - phi3[1]["size"])

    # Changes nothing: Ollama was only asked which blobs it holds; no state file, branch or remote moved.
    asked = ollama.requests[before_requests:]
    assert asked and all(method == "HEAD" and path.startswith("/api/blobs/sha256:") for method, path in asked)
    assert ollama.pull_count["phi3:mini"] == 0 and ollama.delete_count["gemma3:1b"] == 0
    assert state_files(rig) == before_state
    assert {p: refs(p) for p in before_refs} == before_refs
    # One manifest lookup per model of the change that is pulled or stays (moved), none for the others.
    assert sorted(r.path for r in registry.requests if r.method == "GET") == [
        "/v2/library/mistral/manifests/7b", "/v2/library/phi3/manifests/mini"]
    assert {r.method for r in registry.requests} == {"GET"}

    # The command: the same plan, exit 1 because the ref's files have a problem.
    monkeypatch.setenv("OLLAMA_GITOPS_API_KEY", API_KEY)
    code, out, _ = cli("plan", "--ref", "my-pr", "--api-url", rig.url, "--format", "json")
    assert code == 1 and json.loads(out)["actions"] == plan["actions"]


def test_exit_codes_clean_ref_unknown_ref_and_a_service_that_is_down(service, monkeypatch) -> None:
    rig, _, _ = service
    monkeypatch.setenv("OLLAMA_GITOPS_API_KEY", API_KEY)
    commit = branch(rig, "clean", lambda work: work.model("default", "phi3", "mini"))
    code, out, _ = cli("plan", "--ref", commit, "--api-url", rig.url)  # by commit
    assert code == 0
    assert out.splitlines()[0].endswith(": 1 pull (48.8 KiB on 1 server), 0 deletes, 0 problems")
    code, out, _ = cli("plan", "--ref", "main", "--api-url", rig.url)  # what is applied already: nothing to do
    assert code == 0 and out.splitlines()[1:3] == ["no changes to any server",
                                                   f"server default ({rig.ollama.url}): 0 pulls (0 B to download), 0 deletes"]
    code, _, err = cli("plan", "--ref", "no-such-branch", "--api-url", rig.url)
    assert code == 2 and "no branch, tag or ref 'no-such-branch'" in err
    assert rig.client.get("/api/v1/plan", params={"ref": "no-such-branch"}).status_code == 404
    assert rig.client.get("/api/v1/plan", params={"ref": "--upload-pack=touch x"}).status_code == 400
    assert rig.client.get("/api/v1/plan").status_code == 400
    assert rig.client.get("/api/v1/plan", params={"ref": "clean"}, headers={"X-API-Key": "wrong"}).status_code == 401
    monkeypatch.setenv("OLLAMA_GITOPS_API_KEY", "wrong")
    assert cli("plan", "--ref", "clean", "--api-url", rig.url)[0] == 2


def test_a_registry_that_cannot_be_reached_leaves_sizes_unknown_and_a_moved_tag_is_information(service) -> None:
    rig, _, registry = service
    branch(rig, "refresh", lambda work: work.model("default", "llama3.2", "1b",
                                                   'refreshRequestedAt: "2026-12-01T10:00:00Z"\n'))
    plan = rig.client.get("/api/v1/plan", params={"ref": "refresh"}).json()
    (action,) = plan["actions"]
    assert (action["action"], action["model"]) == ("refresh", "default/llama3.2-1b")
    assert action["downloadBytes"] == sum(b["size"] for b in registry.layers("llama3.2:1b")) + \
        registry.config("llama3.2:1b")["size"]  # the stand-in server holds none of the registry's blobs
    (info,) = plan["information"]
    assert info["model"] == "default/llama3.2-1b" and "the tag has moved upstream" in info["message"]

    registry.stop()
    plan = rig.client.get("/api/v1/plan", params={"ref": "refresh"}).json()
    (action,) = plan["actions"]
    assert action["action"] == "refresh" and "downloadBytes" not in action
    assert plan["servers"][0]["unknownSizes"] == 1 and plan["information"] == []
    assert plan["notes"] == ["llama3.2:1b: size unknown: the registry is not reachable: [Errno 111] Connection refused"]


def test_fetch_ref_leaves_the_tracked_branch_where_it_is(service) -> None:
    rig, _, _ = service
    repo: GitRepo = rig.running.repository.repo  # type: ignore[union-attr]
    tracked = repo.head()
    commit = branch(rig, "main-next", lambda work: work.model("default", "phi3", "mini"))
    rig.work.repo.git.push("-q", "origin", "main-next:main")  # main moved on the remote
    assert repo.fetch_ref("main") == commit
    assert repo.head() == tracked  # the API's own fetch moves it, not a plan


def test_a_dry_run_beside_the_running_serve_shows_the_deletion_and_an_empty_state_dir_says_it_cannot(
        service, tmp_path: Path) -> None:
    """The issue's new user: `reconcile --once --dry-run --branch my-pr` while `serve` runs. It used to
    stop on the state directory's lock; with another state directory it left the deletion out."""
    import os

    from ollama_gitops.reconciler import cli as reconciler_cli

    rig, ollama, _ = service
    branch(rig, "my-pr", lambda work: work.remove("models/default/gemma3-1b.yaml"))
    before_state, before_requests = state_files(rig), len(ollama.requests)

    def dry_run(state_dir: Path) -> tuple[int, str]:
        """The dry run's stdout (the plan) and stderr (its caveats) together."""
        out = io.StringIO()
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = reconciler_cli.main(["reconcile", "--once", "--dry-run", "--branch", "my-pr", "--repo",
                                            str(rig.remote), "--state-dir", str(state_dir), "--ollama-url", ollama.url,
                                            "--kubernetes", "off"])
        finally:
            os.umask(umask)  # the command sets the process's umask for what it creates
        return code, out.getvalue()

    code, out = dry_run(rig.state_dir)
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()]
    assert ["delete", "default/gemma3-1b", "gemma3:1b", "file", "removed", "from", "Git"] in rows
    assert "another ollama-gitops process is reconciling" in out and "ollama-gitops plan --ref" in out
    assert state_files(rig) == before_state
    assert not [r for r in ollama.requests[before_requests:] if r[0] != "GET"]  # listed, nothing pulled or deleted

    code, out = dry_run(tmp_path / "new-user")
    assert code == 0
    assert "has no records" in out and "no deletion can be planned" in out and "ollama-gitops plan --ref" in out


WORKFLOW = Path(__file__).resolve().parents[1] / "examples/models-repo/.github/workflows/plan.yaml"


def test_the_workflow_keeps_one_comment_up_to_date_recorded_run(service, tmp_path: Path) -> None:
    """The example workflow's `run:` steps as GitHub runs them (its `uses:` steps and the pip install
    are GitHub's and the suite's), against the real serve and a stand-in of GitHub's comments API: the
    first run creates the comment, the next edits it; a fork's run plans offline."""
    import os
    import sys

    import yaml

    from standins.github_comments import GitHubCommentsStandin

    rig, _, _ = service
    work = rig.work

    def pull_request(change, message: str) -> Path:  # type: ignore[no-untyped-def]
        """`change` committed on the pull request's branch, GitHub's merge commit of it pushed as
        refs/pull/7/merge, and that commit checked out with its parents, as actions/checkout does."""
        work.repo.git.checkout("-q", "feature") if "feature" in work.repo.heads else \
            work.repo.git.checkout("-q", "-b", "feature", "main")
        change(work)
        work.commit(message)
        work.repo.git.checkout("-q", "--detach", "main")
        work.repo.git.merge("-q", "--no-ff", "-m", f"Merge {message}", "feature")
        merge = work.repo.head.commit.hexsha
        work.repo.git.push("-q", "--force", "origin", f"{merge}:refs/pull/7/merge")
        checkout = tmp_path / f"checkout-{merge[:8]}"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(rig.remote), str(checkout)], check=True)
        subprocess.run(["git", "-C", str(checkout), "fetch", "-q", "origin", "refs/pull/7/merge"], check=True)
        subprocess.run(["git", "-C", str(checkout), "checkout", "-q", "--detach", merge], check=True)
        work.repo.git.checkout("-q", "main")
        return checkout

    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    steps = [step for step in job["steps"] if "run" in step][1:]  # after `pip install`, which the suite has done
    assert [s.get("name") for s in steps] == ["validate", "plan", "comment", "result"]
    given = {"OLLAMA_GITOPS_API_URL", "OLLAMA_GITOPS_API_KEY", "PR_NUMBER", "GITHUB_TOKEN"}
    assert set().union(*(s.get("env", {}) for s in steps)) == given  # the test gives what GitHub would

    with GitHubCommentsStandin("acme/models", "ghs_token") as github:
        def run(checkout: Path, secrets: bool) -> list[int]:
            summary = checkout / "summary.md"
            summary.unlink(missing_ok=True)  # each run has a summary of its own
            env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
                   "HOME": str(tmp_path), "GITHUB_API_URL": github.url, "GITHUB_REPOSITORY": "acme/models",
                   "GITHUB_SERVER_URL": "https://github.com", "GITHUB_RUN_ID": "1", "GITHUB_STEP_SUMMARY": str(summary),
                   "PR_NUMBER": "7", "GITHUB_TOKEN": "ghs_token",
                   "OLLAMA_GITOPS_API_URL": rig.url if secrets else "", "OLLAMA_GITOPS_API_KEY": API_KEY if secrets else ""}
            codes = []
            for step in steps:
                done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                      cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
                codes.append(done.returncode)
                assert done.returncode in (0, 1), f"{step['name']}: {done.stdout}{done.stderr}"
            return codes

        first = pull_request(lambda w: w.model("default", "phi3", "mini"), "add phi3")
        assert run(first, secrets=True) == [0, 0, 0, 0]
        assert [m for m, _ in github.requests] == ["GET", "POST"]

        def change(w) -> None:  # type: ignore[no-untyped-def]
            w.remove("models/default/gemma3-1b.yaml")
            w.write("models/default/broken-1.yaml", "name: broken\ntag: 1.10\n")

        second = pull_request(change, "remove gemma3, break a file")
        merge = subprocess.run(["git", "-C", str(second), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert run(second, secrets=True) == [1, 0, 0, 1]  # validate and the result fail: a broken file
        assert [m for m, _ in github.requests] == ["GET", "POST", "GET", "PATCH"]
        (comment,) = github.comments[7]
        base = rig.running.service.store.sync.last_applied_commit  # type: ignore[union-attr]
        assert comment["body"].splitlines() == [
            "<!-- ollama-gitops plan -->",
            f"### ollama-gitops: plan of refs/pull/7/merge ({merge[:12]}) against {base[:12]}",
            "",
            "**1 pull (48.8 KiB on 1 server), 1 delete, 1 problem**",
            "",
            "#### Server `default`: 1 pull, 48.8 KiB to download, 1 delete",
            "",
            "| action | model | reference | download | reason |",
            "| --- | --- | --- | --- | --- |",
            "| delete | `default/gemma3-1b` | `gemma3:1b` |  | file removed from Git |",
            "| pull | `default/phi3-mini` | `phi3:mini` | 48.8 KiB | new model, not in Ollama |",
            "",
            "#### Problems",
            "",
            "- `models/default/broken-1.yaml:2`: field 'tag' must be a string, not a number: YAML reads 1.10 as "
            "1.1; write tag: \"1.10\" to keep it as written",
        ]

        # A fork: no secrets, a read-only token. Planned offline; the comment cannot be written.
        github.read_only = True
        assert run(second, secrets=False) == [1, 0, 0, 1]
        (comment,) = github.comments[7]  # still the one comment, not edited
        shown = (second / "summary.md").read_text().splitlines()
        assert shown[:6] == [
            "<!-- ollama-gitops plan -->",
            f"### ollama-gitops: plan of HEAD ({merge[:12]}) against {base[:12]}",
            "",
            "**1 pull (sizes and servers unknown: planned offline), 1 delete, 1 problem**",
            "",
            "Planned offline (no service was asked): sizes and servers are unknown; against the base's files, "
            "as if every model there were on the servers and pulled by ollama-gitops.",
        ]


def test_a_namespace_folder_replaced_by_a_link_keeps_every_model_of_it(service) -> None:
    """Git reports one changed entry, `models/default`: every model it held is planned (kept), none deleted."""
    rig, _, _ = service
    branch(rig, "linked", lambda work: work.special("models/default", "symlink", "../elsewhere"))
    plan = rig.client.get("/api/v1/plan", params={"ref": "linked"}).json()
    assert [(a["action"], a["model"]) for a in plan["actions"]] == [
        ("keep", f"default/{name}") for name in ("gemma3-1b", "llama3.2-1b", "mistral-7b", "qwen2.5-0.5b")]
    assert [p["path"] for p in plan["problems"]] == ["models/default"]


def test_a_branch_that_removes_every_file_is_a_refused_prune_to_zero_every_model_kept(service) -> None:
    rig, _, _ = service
    branch(rig, "empty", lambda work: [work.remove(f"models/default/{n}.yaml")
                                       for n in ("llama3.2-1b", "gemma3-1b", "qwen2.5-0.5b", "mistral-7b")])
    plan = rig.client.get("/api/v1/plan", params={"ref": "empty"}).json()
    assert [a["action"] for a in plan["actions"]] == ["keep"] * 4
    assert all("refusing to prune to zero without --allow-empty" in a["reason"] for a in plan["actions"])


def test_the_api_alone_plans_against_the_reconcilers_records(service, tmp_path: Path) -> None:
    """`ollama-gitops api` beside a reconciler: it does not talk to Ollama, so what the server holds
    is what the records say, sizes are unknown, and a deletion still shows."""
    import shutil

    rig, ollama, _ = service
    branch(rig, "drop-gemma", lambda work: work.remove("models/default/gemma3-1b.yaml"))
    shared = tmp_path / "api-state"
    shared.mkdir()
    for name in ("models.json", "models.journal", "sync.json"):
        if (rig.state_dir / name).exists():
            shutil.copy(rig.state_dir / name, shared / name)
    api = ApiRig(tmp_path / "api", ollama, with_reconciler=False, state_dir=shared, remote=rig.remote)
    api.start()
    try:
        before = len(ollama.requests)
        plan = api.client.get("/api/v1/plan", params={"ref": "drop-gemma"}).json()
        assert [(a["action"], a["model"]) for a in plan["actions"]] == [("delete", "default/gemma3-1b")]
        (server,) = plan["servers"]
        # The server as the reconciler last saw it (sync.json): its name and URL, what it holds as its records say.
        assert (server["name"], server["observed"], server["url"]) == ("default", "records", ollama.url)
        assert "does not talk to Ollama" in server["note"]
        assert len(ollama.requests) == before
    finally:
        api.stop()


def test_the_summary_line_counts_pulls_with_their_sizes_over_servers_deletes_and_problems() -> None:
    from ollama_gitops.api.planview import summary

    def pull(server: str, size: int | None) -> dict:
        return {"action": "pull", "model": "default/x", "reference": "x:1", "server": server, "reason": "new",
                **({"downloadBytes": size} if size is not None else {})}

    gib = 1024 ** 3
    plan = {"actions": [pull("a", 2 * gib), pull("b", int(1.5 * gib)), pull("c", int(1.2 * gib)),
                        {"action": "delete", "model": "default/y", "reference": "y:1", "server": "a", "reason": "gone"}],
            "problems": [{"path": "models/default/z.yaml", "line": 2, "message": "bad"}]}
    assert summary(plan) == "3 pulls (4.7 GiB on 3 servers), 1 delete, 1 problem"
    plan["actions"][1] = pull("b", None)
    assert summary(plan) == "3 pulls (3.2 GiB and 1 unknown on 3 servers), 1 delete, 1 problem"
    assert summary({**plan, "offline": True}).startswith("3 pulls (sizes and servers unknown: planned offline)")


def test_offline_with_a_base_that_is_not_there_cannot_plan(tmp_path: Path) -> None:
    from gitrepos import WorkRepo

    work = WorkRepo(tmp_path / "work")
    work.model("default", "phi3", "mini")
    work.commit("only commit")
    code, _, err = cli("plan", "--offline", "--base", "HEAD^1", str(work.path))
    assert code == 2 and "cannot read 'HEAD^1'" in err
    work.model("default", "gemma3", "1b")
    work.commit("second")
    code, out, _ = cli("plan", "--offline", str(work.path))
    assert code == 0 and out.splitlines()[0].endswith(
        ": 1 pull (sizes and servers unknown: planned offline), 0 deletes, 0 problems")
    work.close()


def test_the_scope_from_gits_paths_names_files_models_and_whole_namespaces() -> None:
    from ollama_gitops.reconciler.models.desired import DesiredState, ModelKey
    from ollama_gitops.reconciler.preview import scope_from_paths

    base = DesiredState("b", {ModelKey("a", "x-1"): None, ModelKey("b", "y-1"): None}, ())  # type: ignore[dict-item]
    desired = DesiredState("d", {ModelKey("b", "y-1"): None}, (), unreadable=frozenset({ModelKey("c", "z-1")}))  # type: ignore[dict-item]
    assert scope_from_paths(["models/a/x-1.yaml", "README.md", "models/a/deep/w.yaml"], desired, base) == {ModelKey("a", "x-1")}
    assert scope_from_paths(["models/b"], desired, base) == {ModelKey("b", "y-1")}  # the folder changed in kind
    assert scope_from_paths(["models"], desired, base) == {ModelKey("a", "x-1"), ModelKey("b", "y-1"), ModelKey("c", "z-1")}


def test_a_fleet_is_planned_per_server_with_each_servers_sizes(tmp_path: Path) -> None:
    """Two servers (the default one, and gpu-2 from a servers file, labelled gpu: l4): a model without
    `servers:` is pulled on both, each size less what that server holds; one placed by its selector
    only where it matches."""
    import yaml

    with OllamaStandin(dict(CATALOGUE)) as default, OllamaStandin(dict(CATALOGUE)) as gpu2, \
            RegistryStandin(REGISTRY) as registry:
        servers = tmp_path / "servers.yaml"
        servers.write_text(yaml.safe_dump({"servers": [{"name": "gpu-2", "url": gpu2.url, "labels": {"gpu": "l4"}}]}))
        rig = ApiRig(tmp_path, default, registry_url=registry.url, extra_args=("--servers-file", str(servers)))
        rig.work.model("default", "llama3.2", "1b")
        rig.work.commit("seed")
        rig.work.push()
        rig.start()
        try:
            rig.settle()
            commit = branch(rig, "fleet-pr", lambda work: (
                work.model("default", "phi3", "mini"),
                work.model("default", "qwen2.5", "0.5b", "servers:\n  matchLabels: {gpu: l4}\n")))
            phi3 = registry.layers("phi3:mini")
            gpu2.add_blob(phi3[0]["digest"])  # gpu-2 holds phi3's biggest layer already
            plan = rig.client.get("/api/v1/plan", params={"ref": "fleet-pr"}).json()
            assert plan["commit"] == commit
            whole = sum(b["size"] for b in phi3) + registry.config("phi3:mini")["size"]
            qwen = sum(b["size"] for b in registry.layers("qwen2.5:0.5b")) + registry.config("qwen2.5:0.5b")["size"]
            assert [(a["server"], a["action"], a["model"], a.get("downloadBytes")) for a in plan["actions"]] == [
                ("default", "pull", "default/phi3-mini", whole),
                ("gpu-2", "pull", "default/phi3-mini", whole - phi3[0]["size"]),
                ("gpu-2", "pull", "default/qwen2.5-0.5b", qwen),
            ]
            assert [(s["name"], s["pulls"], s["downloadBytes"]) for s in plan["servers"]] == [
                ("default", 1, whole), ("gpu-2", 2, whole - phi3[0]["size"] + qwen)]
            from ollama_gitops.api.planview import summary
            assert summary(plan).startswith("3 pulls (") and "on 2 servers), 0 deletes, 0 problems" in summary(plan)
            assert default.pull_count == gpu2.pull_count == {"llama3.2:1b": 1}  # nothing pulled by the plan
        finally:
            rig.stop()
