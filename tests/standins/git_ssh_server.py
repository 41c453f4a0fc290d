"""Git over SSH on loopback: an asyncssh server that accepts public keys only and runs the real
`git-upload-pack` / `git-receive-pack` for the repository a client asks for, as a Git host does.

    with GitSshServer(root, authorized=[client_key.public_line]) as server:
        url = server.url("models.git")                 # ssh://git@127.0.0.1:<port>/models.git
        known_hosts.write_text(server.known_hosts_line())

The host key is made per server, so a known_hosts file only matches the server it was written
for. `auth_attempts` lists the user names of clients that got as far as authenticating (a client
that rejects the host key never does); `commands` the Git commands that ran.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import asyncssh

GIT_COMMANDS = ("git-upload-pack", "git-receive-pack")


@dataclass(frozen=True)
class SshKeyPair:
    """An OpenSSH private key file (mode 0600, no passphrase) and its public key line."""

    private_file: Path
    public_line: str

    @classmethod
    def generate(cls, path: Path) -> SshKeyPair:
        """A new ed25519 key pair, the private key written to `path`."""
        key = asyncssh.generate_private_key("ssh-ed25519", comment="ollama-gitops-test")
        path.write_bytes(key.export_private_key("openssh"))
        path.chmod(0o600)
        return cls(path, key.export_public_key("openssh").decode().strip())


class GitSshServer:
    """Serves the bare repositories under `root` to clients holding one of the `authorized` keys."""

    def __init__(self, root: Path, authorized: list[str]) -> None:
        self.root = root.resolve()
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.auth_attempts: list[str] = []
        self.commands: list[str] = []
        self._authorized = asyncssh.import_authorized_keys("\n".join(authorized) + "\n")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="git-ssh-server", daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        assert self._acceptor is not None, "start the server first"
        return self._acceptor.get_port()

    def url(self, repository: str, user: str = "git") -> str:
        """The ssh:// URL of the bare repository `root/<repository>`."""
        return f"ssh://{user}@127.0.0.1:{self.port}/{repository}"

    def known_hosts_line(self) -> str:
        """This server's entry for a known_hosts file."""
        return known_hosts_line(self.port, self.host_key.export_public_key("openssh").decode())

    def start(self) -> GitSshServer:
        self._thread.start()
        # listen() returns once the socket is bound and listening: clients can connect at once.
        self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._acceptor is not None:
            acceptor = self._acceptor

            async def close() -> None:
                acceptor.close()
                await acceptor.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> GitSshServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- on the server's event loop ---------------------------------------------------------------------
    async def _listen(self) -> asyncssh.SSHAcceptor:
        owner = self

        class _Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                owner.auth_attempts.append(username)
                return True  # authentication is required; the authorized keys decide

        return await asyncssh.listen(
            "127.0.0.1", 0, server_factory=_Server, server_host_keys=[self.host_key],
            authorized_client_keys=self._authorized, public_key_auth=True, password_auth=False,
            kbdint_auth=False, gss_host=None, process_factory=self._run_git, encoding=None,
            allow_scp=False, agent_forwarding=False, x11_forwarding=False)

    async def _run_git(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        self.commands.append(command)
        argv = shlex.split(command)
        if len(argv) != 2 or argv[0] not in GIT_COMMANDS:
            process.stderr.write(b"only git-upload-pack and git-receive-pack are served here\n")
            process.exit(1)
            return
        repository = self._resolve(argv[1])
        if repository is None:
            process.stderr.write(f"fatal: '{argv[1]}' does not appear to be a git repository\n".encode())
            process.exit(128)
            return
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1"}
        if "GIT_PROTOCOL" in process.env:  # protocol v2, asked for through the SSH session's environment
            env["GIT_PROTOCOL"] = str(process.env["GIT_PROTOCOL"])
        git = await asyncio.create_subprocess_exec(
            argv[0], str(repository), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert git.stdin is not None and git.stdout is not None and git.stderr is not None
        feeder = asyncio.ensure_future(_feed(process.stdin, git.stdin))
        # The session ends when git has written everything and exited; the client's side may stay
        # open (it waits for that output), so the feeder is cancelled rather than awaited.
        await asyncio.gather(_copy(git.stdout, process.stdout), _copy(git.stderr, process.stderr))
        status = await git.wait()
        feeder.cancel()
        process.exit(status)

    def _resolve(self, requested: str) -> Path | None:
        path = (self.root / requested.lstrip("/")).resolve()
        if not path.is_relative_to(self.root) or not (path / "HEAD").is_file():
            return None
        return path


def known_hosts_line(port: int, public_key: str) -> str:
    """A known_hosts line for `public_key` at 127.0.0.1:`port` (OpenSSH's `[host]:port` form for a
    port other than 22)."""
    return f"[127.0.0.1]:{port} {public_key.strip()}\n"


async def _feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncssh.Error):
        pass  # git exited or the client went away: nothing more to pass on
    finally:
        sink.close()


async def _copy(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
