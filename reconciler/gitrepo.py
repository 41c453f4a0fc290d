"""Git access: a private clone of the models repository in the state directory.

Credentials travel only in the environment of the `git` child process (an SSH command line, or an
HTTP header in `GIT_CONFIG_*` variables): never in a URL, a config file, a log line or an error.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import git

GIT_TIMEOUT = 120.0  # seconds; a remote that hangs must not hang the reconciler


class GitError(Exception):
    """A Git operation failed; the message is safe to show (credentials removed)."""


@dataclass(frozen=True)
class GitCredentials:
    """How to authenticate to the remote: an SSH key (with known_hosts) or an HTTPS token."""

    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    username: str = "x-access-token"

    def environment(self) -> dict[str, str]:
        """Environment variables for a `git` child process that carry these credentials."""
        env = {"GIT_TERMINAL_PROMPT": "0"}  # fail instead of waiting for a password on a TTY
        if self.ssh_key_file or self.known_hosts_file:
            ssh = ["ssh", "-o", "BatchMode=yes"]
            if self.ssh_key_file:
                ssh += ["-i", str(self.ssh_key_file), "-o", "IdentitiesOnly=yes"]
            if self.known_hosts_file:
                ssh += ["-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        if self.token:
            basic = base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"})
        return env

    def secrets(self) -> list[str]:
        """Strings that must never be shown."""
        if not self.token:
            return []
        return [self.token, base64.b64encode(f"{self.username}:{self.token}".encode()).decode()]


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` without credentials: URL user info and any of `secrets` are replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class GitRepo:
    """A bare clone of one branch of the models repository, fetched shallow."""

    def __init__(self, url: str, branch: str, path: Path, credentials: GitCredentials | None = None) -> None:
        self.url = url
        self.branch = branch
        self.path = path
        self.credentials = credentials or GitCredentials()
        self._repo: git.Repo | None = None

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if not (self.path / "HEAD").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                git.Repo.init(str(self.path), bare=True)
            self._repo = git.Repo(str(self.path))
            self._set_origin()
        return self._repo

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    @property
    def display_url(self) -> str:
        return redact(self.url, self.credentials.secrets())

    def fetch(self) -> str:
        """Fetch the branch and return its head commit. Raises GitError when the remote cannot be read."""
        refspec = f"+refs/heads/{self.branch}:{self.tracking_ref}"
        self.run("fetch", "--quiet", "--no-tags", "--depth=1", "origin", refspec, action=f"fetch branch {self.branch!r} from {self.display_url}")
        return self.head()

    def head(self) -> str:
        """The last fetched head commit of the branch."""
        return self.repo.git.rev_parse(self.tracking_ref)

    def has_fetched(self) -> bool:
        try:
            self.repo.git.rev_parse("--verify", "-q", self.tracking_ref)
        except git.GitCommandError:
            return False
        return True

    def run(self, *args: str, action: str) -> str:
        """Run a git command in the clone with the credentials; errors become a safe GitError."""
        env = {**os.environ, **self.credentials.environment()}
        try:
            return self.repo.git.execute(["git", *args], env=env, kill_after_timeout=GIT_TIMEOUT)
        except git.GitCommandError as exc:
            detail = (exc.stderr or "").strip().removeprefix("stderr:").strip(" '\n") or f"exit code {exc.status}"
            raise GitError(redact(f"could not {action}: {detail}", self.credentials.secrets())) from None

    def _set_origin(self) -> None:
        assert self._repo is not None
        names = [r.name for r in self._repo.remotes]
        if "origin" not in names:
            self._repo.create_remote("origin", self.url)
        elif self._repo.remotes.origin.url != self.url:
            self._repo.remotes.origin.set_url(self.url)
