"""Git credentials against real transports on loopback: HTTPS with a token (git http-backend behind
TLS, with a private CA) and SSH with a key and a known_hosts file (strict host key checking), through
the reconciler's clone, the API's writer and the command line.

The client side is what production runs: the system `git`, and the system `ssh` through
GIT_SSH_COMMAND. Every failure must say what to fix, fail at once (no prompt), and show no secret.
"""

from __future__ import annotations

import base64
import logging
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from ollama_gitops.api.repository import ModelsRepository
from gitrepos import WorkRepo, init_bare
from ollama_gitops.reconciler.git.credentials import PRIVATE_KEY_COPY
from ollama_gitops.reconciler.git.repo import GitCredentials, GitError, GitRepo
from ollama_gitops.reconciler.models.modelfile import ModelFields
from ollama_gitops.reconciler.git.writer import CreateModel, ModelWriter, WriteRejected
from processes import Children
from standins.git_http_server import GitHttpServer
from standins.git_ssh_server import GitSshServer, SshKeyPair, known_hosts_line
from standins.ollama_server import OllamaStandin
from standins.tls import make_tls_files

TOKEN = "ghp_TransportTestToken0123456789abcdef"
AUTHOR = git.Actor("API Bot", "api@example.com")
COMMAND = shutil.which("ollama-gitops", path=str(Path(sys.executable).parent)) or "ollama-gitops"


@dataclass
class Served:
    """The repository the servers serve (`root/models.git`), and a working clone that pushes to it
    directly, as the people who merge pull requests would."""

    root: Path
    bare: Path
    work: WorkRepo

    def head(self) -> str:
        return git.Repo(self.bare).commit("main").hexsha

    def history(self) -> str:
        """Every commit of the served repository, with its patch: what a push made public."""
        return git.Repo(self.bare).git.log("-p", "--all", "--format=%H%n%an <%ae>%n%B")


@pytest.fixture
def served(tmp_path: Path) -> Served:
    root = tmp_path / "served"
    bare = init_bare(root / "models.git")
    work = WorkRepo(tmp_path / "work", remote=bare)
    work.model("default", "llama3.2", "1b")
    work.commit("seed")
    work.push()
    return Served(root, bare, work)


@pytest.fixture
def https(served: Served, tmp_path: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(served.root, make_tls_files(tmp_path / "tls"), TOKEN) as server:
        yield server


@pytest.fixture
def ssh_key(tmp_path: Path) -> SshKeyPair:
    (tmp_path / "keys").mkdir()
    return SshKeyPair.generate(tmp_path / "keys" / "id_ed25519")


@pytest.fixture
def sshd(served: Served, ssh_key: SshKeyPair) -> Iterator[GitSshServer]:
    with GitSshServer(served.root, [ssh_key.public_line]) as server:
        yield server


@pytest.fixture
def known_hosts(tmp_path: Path, sshd: GitSshServer) -> Path:
    path = tmp_path / "keys" / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path


def token_secrets(token: str, username: str = "x-access-token") -> list[str]:
    return [token, base64.b64encode(f"{username}:{token}".encode()).decode()]


def key_secrets(key: SshKeyPair) -> list[str]:
    """The private key's base64 lines: none of them may ever be shown."""
    return [line for line in key.private_file.read_text().splitlines() if line and not line.startswith("-----")]


def assert_not_shown(texts: list[str], secrets: list[str]) -> None:
    assert secrets and all(secrets)
    for text in texts:
        for secret in secrets:
            assert secret not in text


@contextmanager
def api_repository(repo: GitRepo) -> Iterator[ModelsRepository]:
    """The API's side of the repository (as api/runtime.py builds it), closed afterwards."""
    repository = ModelsRepository(repo, ModelWriter(repo, AUTHOR))
    try:
        yield repository
    finally:
        repository.writer.close()


# -- HTTPS with a token -------------------------------------------------------------------------------------

def test_https_clone_and_fetch_with_the_token(https: GitHttpServer, served: Served, tmp_path: Path) -> None:
    credentials = GitCredentials(token=TOKEN, ca_file=https.tls.ca_cert)
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git", credentials)
    assert repo.fetch() == served.head()
    served.work.model("default", "phi3", "mini")
    served.work.commit("add phi3")
    served.work.push()
    assert repo.fetch() == served.head()  # the incremental fetch after the shallow clone
    assert https.requests and all(r.authorized and r.user == "x-access-token" for r in https.requests)
    assert https.services() == {"git-upload-pack"}
    assert_not_shown([(tmp_path / "clone.git" / "config").read_text()], token_secrets(TOKEN))


def test_https_fetch_again_sends_the_token_and_keeps_it_out_of_argv_and_the_clone(
        https: GitHttpServer, served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fetch of a no-op `reconcile --once` names the URL on git's command line: never the token.
    url = with_userinfo(https.url("models.git"), "deploy-bot", TOKEN)
    repo = GitRepo(url, "main", tmp_path / "clone.git", GitCredentials(ca_file=https.tls.ca_cert))
    assert repo.fetch() == served.head()
    served.work.model("default", "phi3", "mini")
    served.work.commit("add phi3")
    served.work.push()
    shim, argv = tmp_path / "shim", tmp_path / "argv"  # a git first on PATH that keeps its arguments
    shim.mkdir()
    (shim / "git").write_text(f'#!/bin/sh\necho "$@" >> "{argv}"\nexec {shutil.which("git")} "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    requests = len(https.requests)
    assert repo.fetch_again() == served.head()
    assert " fetch " in argv.read_text() and https.url("models.git") in argv.read_text()
    assert https.requests[requests:] and all(r.authorized and r.user == "deploy-bot" for r in https.requests)
    secrets = token_secrets(TOKEN, "deploy-bot")
    assert files_holding(tmp_path / "clone.git", secrets) == []  # FETCH_HEAD, config and refs included
    assert_not_shown([argv.read_text()], secrets)
    wrong = GitRepo(with_userinfo(https.url("models.git"), "deploy-bot", "wrong-token-0123456789"), "main",
                    tmp_path / "clone.git", GitCredentials(ca_file=https.tls.ca_cert))
    with pytest.raises(GitError, match="the server refused the HTTPS token") as refused:
        wrong.fetch_again()
    assert_not_shown([str(refused.value), argv.read_text()], token_secrets("wrong-token-0123456789", "deploy-bot"))


def test_https_api_write_is_pushed_with_the_token(https: GitHttpServer, served: Served, tmp_path: Path) -> None:
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "api.git",
                   GitCredentials(token=TOKEN, ca_file=https.tls.ca_cert))
    with api_repository(repo) as repository:
        repository.refresh()
        assert repository.last_error is None
        written = repository.write(CreateModel("default", ModelFields("phi3", "mini")))
        assert written.commit == served.head()
        assert git.Repo(served.bare).commit("main").message == "Add model phi3:mini\n"
    assert "git-receive-pack" in https.services()
    assert_not_shown([served.history(), (tmp_path / "api.git" / "config").read_text()], token_secrets(TOKEN))


def test_https_wrong_token_fails_clearly_without_showing_it(https: GitHttpServer, served: Served, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    wrong = "ghp_WrongTokenWrongTokenWrongToken99"
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "api.git",
                   GitCredentials(token=wrong, ca_file=https.tls.ca_cert))
    before = served.head()
    with caplog.at_level(logging.DEBUG):
        with api_repository(repo) as repository:
            repository.refresh()  # logs the failure, keeps going
            assert repository.last_error is not None
            assert "the server refused the HTTPS token (sent as user 'x-access-token')" in repository.last_error
            with pytest.raises(WriteRejected) as rejected:
                repository.write(CreateModel("default", ModelFields("phi3", "mini")))
    assert rejected.value.status == 503
    assert "the server refused the HTTPS token" in rejected.value.message
    assert "the server refused the HTTPS token" in caplog.text
    assert https.requests and not any(r.authorized for r in https.requests)  # sent, and refused
    assert served.head() == before
    assert_not_shown([repository.last_error, rejected.value.message, caplog.text], token_secrets(wrong))


def test_https_without_a_token_asks_for_one(https: GitHttpServer, tmp_path: Path) -> None:
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git", GitCredentials(ca_file=https.tls.ca_cert))
    with pytest.raises(GitError) as failed:
        repo.fetch()  # GIT_TERMINAL_PROMPT=0: an error at once, never a prompt
    assert "the server requires authentication: give an HTTPS token with --git-token-file" in str(failed.value)
    assert [r.user for r in https.requests] == [None]


def test_https_untrusted_certificate_is_a_tls_error_and_the_token_is_never_sent(
        https: GitHttpServer, tmp_path: Path) -> None:
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git", GitCredentials(token=TOKEN))
    with pytest.raises(GitError) as failed:
        repo.fetch()
    assert "the server's TLS certificate is not trusted" in str(failed.value)
    assert "--git-ca-file" in str(failed.value)
    assert https.requests == []  # the connection ended in the handshake, before any header went out
    assert_not_shown([str(failed.value)], token_secrets(TOKEN))


def test_https_certificate_from_another_ca_is_refused(https: GitHttpServer, tmp_path: Path) -> None:
    other_ca = make_tls_files(tmp_path / "other-tls").ca_cert
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git",
                   GitCredentials(token=TOKEN, ca_file=other_ca))
    with pytest.raises(GitError, match=f"not signed by a CA in {other_ca}"):
        repo.fetch()
    assert https.requests == []


def test_https_unreadable_ca_file_is_named(https: GitHttpServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git", GitCredentials(token=TOKEN, ca_file=missing))
    with pytest.raises(GitError, match=f"the CA file {missing} \\(--git-ca-file\\) cannot be read"):
        repo.fetch()
    assert https.requests == []


def test_https_token_header_is_added_after_config_the_environment_already_has(
        https: GitHttpServer, served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whoever starts ollama-gitops may pass Git settings the same way: both must reach git.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.abbrev")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "9")
    repo = GitRepo(https.url("models.git"), "main", tmp_path / "clone.git",
                   GitCredentials(token=TOKEN, ca_file=https.tls.ca_cert))
    assert repo.fetch() == served.head()
    assert repo.run("config", "--get", "core.abbrev", action="read config") == "9"
    assert all(r.authorized for r in https.requests)


# -- SSH with a key and known_hosts -------------------------------------------------------------------------

def ssh_credentials(key: Path, known_hosts: Path) -> GitCredentials:
    return GitCredentials(ssh_key_file=key, known_hosts_file=known_hosts)


def test_ssh_clone_fetch_and_push(sshd: GitSshServer, served: Served, ssh_key: SshKeyPair, known_hosts: Path,
                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    credentials = ssh_credentials(ssh_key.private_file, known_hosts)
    reconciler_clone = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git", credentials)
    assert reconciler_clone.fetch() == served.head()
    with caplog.at_level(logging.DEBUG):
        with api_repository(GitRepo(sshd.url("models.git"), "main", tmp_path / "api.git", credentials)) as repository:
            repository.refresh()
            written = repository.write(CreateModel("default", ModelFields("phi3", "mini")))
    assert written.commit == served.head()
    assert reconciler_clone.fetch() == written.commit
    assert "git-receive-pack '/models.git'" in sshd.commands and set(sshd.auth_attempts) == {"git"}
    assert not (tmp_path / "clone.git" / PRIVATE_KEY_COPY).exists()  # a 0600 key is used as it is
    assert_not_shown([caplog.text, served.history()], key_secrets(ssh_key))


def test_ssh_known_hosts_made_as_the_docs_say(sshd: GitSshServer, served: Served, ssh_key: SshKeyPair,
                                              tmp_path: Path) -> None:
    # docs/git-credentials.md: ssh-keyscan, then compare the fingerprint with the one the host publishes.
    scan = subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "-t", "ed25519", "127.0.0.1"],
                          capture_output=True, text=True, timeout=30, check=True)
    known_hosts = tmp_path / "keys" / "known_hosts"
    known_hosts.write_text(scan.stdout)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(known_hosts)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert fingerprint == sshd.host_key.get_fingerprint("sha256")
    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git",
                   ssh_credentials(ssh_key.private_file, known_hosts))
    assert repo.fetch() == served.head()


def test_ssh_changed_host_key_is_refused_before_the_key_is_offered(
        sshd: GitSshServer, ssh_key: SshKeyPair, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    impostor = SshKeyPair.generate(tmp_path / "keys" / "impostor").public_line
    known_hosts = tmp_path / "keys" / "known_hosts"
    known_hosts.write_text(known_hosts_line(sshd.port, impostor))
    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git",
                   ssh_credentials(ssh_key.private_file, known_hosts))
    with caplog.at_level(logging.DEBUG), pytest.raises(GitError) as failed:
        repo.fetch()
    message = str(failed.value)
    assert "Host key verification failed" in message
    assert f"the SSH server's host key is not the one in the known_hosts file {known_hosts}" in message
    assert sshd.auth_attempts == []  # the client stopped at the host key: it never authenticated
    assert_not_shown([message, caplog.text], key_secrets(ssh_key))


def test_ssh_host_missing_from_known_hosts_is_refused(sshd: GitSshServer, ssh_key: SshKeyPair, tmp_path: Path) -> None:
    known_hosts = tmp_path / "keys" / "known_hosts"
    known_hosts.write_text("[127.0.0.1]:1 " + ssh_key.public_line + "\n")  # another port: no entry for ours
    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git",
                   ssh_credentials(ssh_key.private_file, known_hosts))
    with pytest.raises(GitError) as failed:
        repo.fetch()
    assert "Host key verification failed" in str(failed.value)
    assert f"the SSH server's host key is not in the known_hosts file {known_hosts}" in str(failed.value)
    assert sshd.auth_attempts == []
    assert known_hosts.read_text() == "[127.0.0.1]:1 " + ssh_key.public_line + "\n"  # nothing learnt


def test_ssh_key_the_server_does_not_accept(sshd: GitSshServer, served: Served, known_hosts: Path,
                                            tmp_path: Path) -> None:
    stranger = SshKeyPair.generate(tmp_path / "keys" / "stranger")
    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git",
                   ssh_credentials(stranger.private_file, known_hosts))
    with pytest.raises(GitError) as failed:
        repo.fetch()
    assert f"the SSH server did not accept the key {stranger.private_file}" in str(failed.value)
    assert sshd.auth_attempts and sshd.commands == []
    assert_not_shown([str(failed.value)], key_secrets(stranger))


def test_ssh_key_file_that_cannot_be_loaded(sshd: GitSshServer, known_hosts: Path, tmp_path: Path) -> None:
    missing = tmp_path / "keys" / "not-mounted"
    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git", ssh_credentials(missing, known_hosts))
    with pytest.raises(GitError, match=f"ssh could not load the key {missing}"):
        repo.fetch()
    assert sshd.commands == []


def test_ssh_key_readable_by_others_is_used_through_a_private_copy(
        sshd: GitSshServer, served: Served, ssh_key: SshKeyPair, known_hosts: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # As a Kubernetes Secret volume mounts it by default (0644), and as ssh refuses it when its own
    # user owns the file.
    ssh_key.private_file.chmod(0o644)
    plain_ssh = shlex.join(["ssh", "-o", "BatchMode=yes", "-i", str(ssh_key.private_file), "-o", "IdentitiesOnly=yes",
                            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"])
    refused = subprocess.run(["git", "ls-remote", sshd.url("models.git")], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "GIT_SSH_COMMAND": plain_ssh, "GIT_TERMINAL_PROMPT": "0"})
    assert refused.returncode != 0 and "UNPROTECTED PRIVATE KEY FILE" in refused.stderr

    repo = GitRepo(sshd.url("models.git"), "main", tmp_path / "clone.git",
                   ssh_credentials(ssh_key.private_file, known_hosts))
    with caplog.at_level(logging.INFO):
        assert repo.fetch() == served.head()
    copy = tmp_path / "clone.git" / PRIVATE_KEY_COPY
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert copy.read_bytes() == ssh_key.private_file.read_bytes()
    assert stat.S_IMODE(ssh_key.private_file.stat().st_mode) == 0o644  # the mounted file is left alone
    assert f"action=ssh-key-copied key={ssh_key.private_file} mode=-rw-r--r--" in caplog.text
    served.work.model("default", "phi3", "mini")
    served.work.commit("add phi3")
    served.work.push()
    assert repo.fetch_again() == served.head()  # the fetch alone: the same copy, in the clone
    assert copy.read_bytes() == ssh_key.private_file.read_bytes()
    assert_not_shown([caplog.text], key_secrets(ssh_key))


# -- the command line, end to end ---------------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path: Path, ollama: OllamaStandin) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_", "GIT_"))}
    environment.update({
        "OLLAMA_GITOPS_STATE_DIR": str(tmp_path / "state"),
        "OLLAMA_GITOPS_OLLAMA_URL": ollama.url,
        "OLLAMA_GITOPS_KUBERNETES": "off",
        "HOME": str(tmp_path / "home"),
    })
    return environment


def dry_run(children: Children, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`reconcile --once --dry-run ARGS` to its end; its output is in the report if the test fails."""
    return children.run(f"dry-run-{len(children.started) + 1}", [COMMAND, "reconcile", "--once", "--dry-run", *args],
                        env=env, timeout=120)


def expected_plan(served: Served) -> list[str]:
    return ["ACTION  MODEL                REFERENCE    REASON",
            "pull    default/llama3.2-1b  llama3.2:1b  new model, not in Ollama",
            f"dry run: Succeeded at {served.head()[:12]}: would make 1 pull, 0 deletes, 0 already in Ollama"]


def test_cli_dry_run_over_ssh_with_a_secret_mounted_0644(
        sshd: GitSshServer, served: Served, ssh_key: SshKeyPair, known_hosts: Path, cli_env: dict[str, str],
        tmp_path: Path, children: Children) -> None:
    ssh_key.private_file.chmod(0o644)
    result = dry_run(children, ["--repo", sshd.url("models.git"), "--ssh-key-file", str(ssh_key.private_file),
                      "--known-hosts-file", str(known_hosts)], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_plan(served)
    assert stat.S_IMODE((tmp_path / "state" / "clone.git" / PRIVATE_KEY_COPY).stat().st_mode) == 0o600
    assert_not_shown([result.stdout, result.stderr], key_secrets(ssh_key))


@pytest.mark.parametrize("ca_from", ["option", "environment"])
def test_cli_dry_run_over_https_with_a_token_and_a_private_ca(
        ca_from: str, https: GitHttpServer, served: Served, cli_env: dict[str, str], children: Children) -> None:
    env = {**cli_env, "OLLAMA_GITOPS_GIT_TOKEN": TOKEN}
    args = ["--repo", https.url("models.git")]
    if ca_from == "option":
        args += ["--git-ca-file", str(https.tls.ca_cert)]
    else:
        env["OLLAMA_GITOPS_GIT_CA_FILE"] = str(https.tls.ca_cert)
    result = dry_run(children, args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_plan(served)
    assert https.requests and all(r.authorized for r in https.requests)
    assert_not_shown([result.stdout, result.stderr], token_secrets(TOKEN))


def test_cli_wrong_token_exits_non_zero_with_the_reason(https: GitHttpServer, cli_env: dict[str, str],
                                                        children: Children) -> None:
    env = {**cli_env, "OLLAMA_GITOPS_GIT_TOKEN": "not-the-token-0123"}
    result = dry_run(children, ["--repo", https.url("models.git"), "--git-ca-file", str(https.tls.ca_cert)], env)
    assert result.returncode != 0
    assert "the server refused the HTTPS token" in result.stdout + result.stderr
    assert_not_shown([result.stdout, result.stderr], token_secrets("not-the-token-0123"))


# -- credentials in the repository URL, and the state directory's modes -------------------------------------

def with_userinfo(url: str, user: str, token: str) -> str:
    return url.replace("https://", f"https://{user}:{token}@", 1)


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every file under `root` that holds one of `secrets`."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in secrets):
            found.append(str(path.relative_to(root)))
    return found


def assert_private(root: Path) -> None:
    """Nothing under `root`, itself included, that the group or others may use."""
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_cli_token_in_the_url_works_and_reaches_no_file_log_or_error(
        https: GitHttpServer, served: Served, cli_env: dict[str, str], tmp_path: Path, children: Children) -> None:
    url = with_userinfo(https.url("models.git"), "deploy-bot", TOKEN)
    result = dry_run(children, ["--repo", url, "--git-ca-file", str(https.tls.ca_cert)], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_plan(served)
    assert https.requests and all(r.authorized and r.user == "deploy-bot" for r in https.requests)
    secrets = token_secrets(TOKEN, "deploy-bot")
    assert files_holding(tmp_path / "state", secrets) == []
    assert_not_shown([result.stdout, result.stderr], secrets)
    assert_private(tmp_path / "state")
    # A wrong token in the URL: the error says what to check, and shows neither token nor URL user info.
    wrong = dry_run(children, ["--repo", with_userinfo(https.url("models.git"), "deploy-bot", "wrong-token-0123456789"),
                               "--git-ca-file", str(https.tls.ca_cert)], cli_env)
    assert wrong.returncode != 0 and "the server refused the HTTPS token" in wrong.stdout + wrong.stderr
    assert_not_shown([wrong.stdout, wrong.stderr], token_secrets("wrong-token-0123456789", "deploy-bot"))


def test_cli_rewrites_a_clone_whose_config_holds_a_token(
        https: GitHttpServer, served: Served, cli_env: dict[str, str], tmp_path: Path, children: Children) -> None:
    url = with_userinfo(https.url("models.git"), "x-access-token", TOKEN)
    old = tmp_path / "state" / "clone.git"  # as an older version left it: the URL as given, 0755/0644
    subprocess.run(["git", "init", "-q", "--bare", str(old)], check=True)
    subprocess.run(["git", "--git-dir", str(old), "remote", "add", "origin", url], check=True)
    (tmp_path / "state").chmod(0o755)
    assert files_holding(tmp_path / "state", [TOKEN]) == ["clone.git/config"]
    result = dry_run(children, ["--repo", url, "--git-ca-file", str(https.tls.ca_cert)], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_holding(tmp_path / "state", token_secrets(TOKEN)) == []
    assert_private(tmp_path / "state")


@pytest.mark.parametrize("token_from", ["url", "environment", "file"])
def test_a_token_for_a_plain_http_remote_is_refused_at_start(token_from: str, cli_env: dict[str, str],
                                                             tmp_path: Path, children: Children) -> None:
    env, args = dict(cli_env), ["--repo", "http://127.0.0.1:9/models.git"]
    if token_from == "url":
        args = ["--repo", f"http://bot:{TOKEN}@127.0.0.1:9/models.git"]
    elif token_from == "environment":
        env["OLLAMA_GITOPS_GIT_TOKEN"] = TOKEN
    else:
        (tmp_path / "token").write_text(TOKEN + "\n")
        args += ["--git-token-file", str(tmp_path / "token")]
    for command in (["reconcile", "--once"], ["serve"], ["api"]):
        result = children.run(f"{command[0]}-{len(children.started) + 1}", [COMMAND, *command, *args], env=env,
                              timeout=60)
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert result.stderr.count("\n") == 1 and "http://" in result.stderr and "https://" in result.stderr
        assert "in clear" in result.stderr
        assert_not_shown([result.stdout, result.stderr], token_secrets(TOKEN, "bot") + token_secrets(TOKEN))


def test_serve_with_a_token_in_the_url_keeps_it_out_of_both_clones_and_the_log(
        https: GitHttpServer, served: Served, ollama: OllamaStandin, tmp_path: Path, children: Children) -> None:
    import httpx

    from waiting import eventually

    url = with_userinfo(https.url("models.git"), "deploy-bot", TOKEN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "KUBERNETES_", "GIT_"))}
    env["HOME"] = str(tmp_path / "home")
    state = tmp_path / "state"
    serve = children.start("serve", [COMMAND, "serve", "--repo", url, "--git-ca-file", str(https.tls.ca_cert),
                                     "--state-dir", str(state), "--ollama-url", ollama.url, "--listen", "127.0.0.1:0",
                                     "--kubernetes", "off", "--log-level", "DEBUG"], env=env)
    api = serve.wait_for(r"API listening on (http://\S+)", timeout=90).group(1)
    eventually(lambda: httpx.get(f"{api}/readiness").status_code == 200, timeout=60, what="serve ready")
    created = httpx.post(f"{api}/api/v1/models", json={"name": "phi3", "tag": "mini"}, timeout=60)
    assert created.status_code == 201, created.text
    assert git.Repo(served.bare).commit("main").message == "Add model phi3:mini\n"
    eventually(lambda: (state / "clone.git" / "config").exists(), timeout=60, what="the reconciler's clone")
    assert serve.terminate(timeout=60) == 0
    log = serve.stderr_path
    secrets = token_secrets(TOKEN, "deploy-bot")
    assert files_holding(state, secrets) == [], log.read_text()
    assert {"api.git", "clone.git"} <= {p.name for p in state.iterdir()}
    assert_not_shown([log.read_text(), served.history()], secrets)
    assert "git-receive-pack" in https.services() and {r.user for r in https.requests} == {"deploy-bot"}
    assert_private(state)
