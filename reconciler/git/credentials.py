"""Credentials for the models repository, handed to each `git` child process in its environment.

- SSH: the system `ssh`, through `GIT_SSH_COMMAND`, with one private key and strict host key
  checking against a known_hosts file. ssh ignores a key file that its owner lets others read
  ("UNPROTECTED PRIVATE KEY FILE"), which is how a Kubernetes Secret is mounted by default (0644);
  such a key is used through a private copy (0600) in the clone's directory instead.
- HTTPS: a token sent as HTTP Basic authentication in an `http.extraHeader` set through
  `GIT_CONFIG_*` variables (appended to any the environment already has), and optionally a private
  CA's certificate to verify the server with (`GIT_SSL_CAINFO`). TLS verification is never turned off.

A user name and token written into an `https://user:token@host/...` URL are taken out of it and
sent the same way (git would otherwise keep the URL, token and all, in the clone's config file).
A token is never sent over plain `http://`.

Nothing secret is ever written to a URL, a Git config file, a log line or an error; `explain` turns
git's and ssh's words for an authentication failure into what to check.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger("ollama_gitops.git")

PRIVATE_KEY_COPY = "ssh-identity"  # the name of the private copy of a too-open key, in the clone's directory
DOCS = "docs/git-credentials.md"


@dataclass(frozen=True)
class GitCredentials:
    """How to authenticate to the remote: an SSH key (with known_hosts) or an HTTPS token, and a CA."""

    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    username: str = "x-access-token"
    ca_file: Path | None = None

    def environment(self, base: Mapping[str, str] | None = None, private_dir: Path | None = None) -> dict[str, str]:
        """Variables to add to `base` (the environment a `git` child process starts from) so that it
        carries these credentials.

        `private_dir`, a directory only this process's user can use (the clone), is where a private
        copy of a key file that ssh would refuse is kept.
        """
        base = base or {}
        env = {"GIT_TERMINAL_PROMPT": "0"}  # fail instead of waiting for a password on a TTY
        if self.ssh_key_file or self.known_hosts_file:
            # BatchMode: never prompt (passphrase, host key); StrictHostKeyChecking=yes: an unknown
            # or changed host key is an error, never learnt; UpdateHostKeys=no: the known_hosts
            # file is only read (it is a read-only Secret in Kubernetes).
            ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no"]
            if self.ssh_key_file:
                ssh += ["-i", str(self._key_for_ssh(private_dir)), "-o", "IdentitiesOnly=yes"]
            if self.known_hosts_file:
                ssh += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        config: list[tuple[str, str]] = []
        if self.token:
            config.append(("http.extraHeader", f"Authorization: Basic {self._basic()}"))
        if config:
            # GIT_CONFIG_COUNT may already be in use (by whoever started us): add after its entries.
            try:
                first = int(base.get("GIT_CONFIG_COUNT", "0") or "0")
            except ValueError:
                first = 0  # git itself rejects such a count; start a list it can read
            for index, (key, value) in enumerate(config, start=first):
                env[f"GIT_CONFIG_KEY_{index}"] = key
                env[f"GIT_CONFIG_VALUE_{index}"] = value
            env["GIT_CONFIG_COUNT"] = str(first + len(config))
        if self.ca_file:
            # The variable rather than http.sslCAInfo: git lets the variable win over any config, and
            # many images already set it (to the system bundle), which would win over http.sslCAInfo.
            env["GIT_SSL_CAINFO"] = str(self.ca_file)
        return env

    def for_remote(self, url: str) -> tuple[str, GitCredentials]:
        """The URL to give git, without user info, and these credentials with the URL's user name
        and token. Raises ValueError when a token would travel in clear (an `http://` remote), or
        when the URL and the settings give two different tokens."""
        try:
            parts = urlsplit(url) if "://" in url else None
            user, password = (parts.username, parts.password) if parts is not None else (None, None)
        except ValueError:  # a malformed port or IPv6 literal: git says what is wrong with it
            return url, self
        if parts is None:
            return url, self  # a path, or scp-like `user@host:path` (SSH: its user is no secret)
        scheme = parts.scheme.lower()
        credentials = self
        if scheme in ("http", "https") and (user is not None or password is not None):
            token = unquote(password) if password else None
            if token and self.token and token != self.token:
                raise ValueError("two HTTPS tokens: one in the repository URL and one in --git-token-file or "
                                 "OLLAMA_GITOPS_GIT_TOKEN; give only one")
            credentials = replace(self, token=token or self.token, username=unquote(user) if user else self.username)
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        if scheme == "http" and credentials.token:
            raise ValueError(f"refusing to send a Git token in clear to the http:// repository {url}: "
                             "use its https:// URL, or give no token")
        return url, credentials

    def secrets(self) -> list[str]:
        """Strings that must never be shown."""
        if not self.token:
            return []
        return [self.token, self._basic()]

    def explain(self, output: str) -> str | None:
        """What to check, when git's `output` says that connecting or authenticating failed; else None."""
        if "Host key verification failed" in output:
            where = (f"the known_hosts file {self.known_hosts_file}" if self.known_hosts_file
                     else "~/.ssh/known_hosts (no --known-hosts-file was given)")
            if "has changed" in output or "REMOTE HOST IDENTIFICATION HAS CHANGED" in output:
                return (f"the SSH server's host key is not the one in {where}: if the server's key really "
                        "changed, fetch the new one with ssh-keyscan and compare its fingerprint with the one "
                        f"the Git host publishes before replacing the entry (see {DOCS})")
            return (f"the SSH server's host key is not in {where} and host keys are checked strictly: add "
                    f"the line `ssh-keyscan -p PORT HOST` prints, once its fingerprint is checked (see {DOCS})")
        key = f"the key {self.ssh_key_file}" if self.ssh_key_file else "the offered key"
        if "UNPROTECTED PRIVATE KEY FILE" in output:
            return (f"ssh refused {key} because other users can read it: give the file mode 0400 "
                    "(in Kubernetes, the Secret volume's defaultMode: 0400)")
        if re.search(r"Load key .*: |no such identity|Identity file .* not accessible", output):
            # Before "Permission denied (publickey)", which follows: the key was never offered.
            return (f"ssh could not load {key}: it must be a file this process can read, holding a private "
                    "key in OpenSSH or PEM form without a passphrase")
        if "Permission denied (publickey" in output:
            return (f"the SSH server did not accept {key}: register its public key with the repository (a "
                    "deploy key, with write access if the API pushes) and check the user name in the URL")
        if re.search(r"Problem with the SSL CA cert|error setting certificate", output) and self.ca_file:
            return f"the CA file {self.ca_file} (--git-ca-file) cannot be read or holds no PEM certificate"
        if re.search(r"certificate verification failed|SSL certificate problem|certificate verify failed", output):
            if self.ca_file:
                return (f"the server's TLS certificate is not signed by a CA in {self.ca_file} (--git-ca-file "
                        "replaces the system's CA certificates for Git: put every CA needed in that file)")
            return ("the server's TLS certificate is not trusted: if a private CA signed it, give that CA's "
                    "certificate with --git-ca-file (OLLAMA_GITOPS_GIT_CA_FILE)")
        if re.search(r"could not read Username|Authentication failed|returned error: 401", output):
            if self.token:
                return (f"the server refused the HTTPS token (sent as user {self.username!r}): check that it is "
                        "valid and unexpired, that it may read (and, for the API, write) this repository, and "
                        f"that --git-username is what the Git host expects (see {DOCS})")
            return ("the server requires authentication: give an HTTPS token with --git-token-file or "
                    "OLLAMA_GITOPS_GIT_TOKEN")
        if "returned error: 403" in output:
            return ("the server refused access with these credentials (403): the token lacks read, or for "
                    "pushes write, permission on this repository")
        return None

    def _basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.token}".encode()).decode()

    def _key_for_ssh(self, private_dir: Path | None) -> Path:
        """The key file to give ssh: the configured one, or its private copy where ssh would refuse it.

        ssh refuses a key file owned by its own user that group or others may read (a file owned by
        another user, say root with a non-root process, it takes as it is). The copy is compared
        with the file on every use, so a rotated Secret is picked up without a restart.
        """
        key = self.ssh_key_file
        assert key is not None
        copy = private_dir / PRIVATE_KEY_COPY if private_dir is not None else None
        try:
            info = key.stat()
            refused = info.st_uid == os.getuid() and info.st_mode & 0o077 != 0
            content = key.read_bytes() if refused and copy is not None else None
        except OSError:
            return key  # missing or unreadable: ssh says what is wrong with it, explain() what to do
        if content is None or copy is None:
            if copy is not None:
                copy.unlink(missing_ok=True)  # no longer needed (the file's mode was fixed)
            return key
        try:
            if copy.read_bytes() == content:
                return copy
        except OSError:
            pass
        import tempfile  # (with shutil and random: ~4 ms a command that never copies a key need not pay)

        # mkstemp creates the file 0600 before anything is written to it; rename makes it whole at once.
        handle, temporary = tempfile.mkstemp(prefix=f".{PRIVATE_KEY_COPY}-", dir=private_dir)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.replace(temporary, copy)
        except BaseException:
            os.unlink(temporary)
            raise
        log.info("action=ssh-key-copied key=%s mode=%s copy=%s reason='ssh refuses a key file others can "
                 "read; set the file mode to 0400 to use it directly'", key, stat.filemode(info.st_mode), copy)
        return copy
