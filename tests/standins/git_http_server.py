"""Git's smart HTTP protocol over TLS on loopback: `git http-backend` (the CGI program that real Git
hosting runs behind a web server) behind a small threaded HTTPS server that demands a token.

Every request, for fetches (git-upload-pack) and pushes (git-receive-pack) alike, must carry
`Authorization: Basic base64(user:token)` with the right token; anything else is answered 401 with
`WWW-Authenticate: Basic realm=...`, as GitHub, GitLab and Gitea do. Chunked request bodies (what
git sends for pushes bigger than its `http.postBuffer`) are decoded before they reach the CGI.

    with GitHttpServer(root, tls_files, token="s3cret") as server:
        url = server.url("models.git")   # https://127.0.0.1:<port>/models.git

`requests` records what arrived (method, path, user, whether the token matched): a client that
refuses the certificate sends none.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from .tls import TlsFiles

REALM = "ollama-gitops test"
_BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip(),
                "git-http-backend")


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    user: str | None
    authorized: bool


class GitHttpServer:
    """Serves the bare repositories under `root` over HTTPS, to clients that send `token`."""

    def __init__(self, root: Path, tls: TlsFiles, token: str) -> None:
        self.root = root
        self.tls = tls
        self.token = token
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(tls.server_cert, tls.server_key)
        # Binding here means the port accepts connections before any client is told about it.
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        # A short poll interval: stopping waits for the loop to look at its flag.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="git-http-server", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, repository: str) -> str:
        """The HTTPS URL of the bare repository `root/<repository>`."""
        return f"https://127.0.0.1:{self.port}/{repository}"

    def services(self) -> set[str]:
        """The Git services that authorized requests used (git-upload-pack, git-receive-pack)."""
        return {service for r in self.requests if r.authorized
                for service in ("git-upload-pack", "git-receive-pack") if service in r.path}

    def start(self) -> GitHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> GitHttpServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- called from the handler threads ----------------------------------------------------------------
    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: GitHttpServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that drops the connection during the TLS handshake (it does not trust the
        # certificate) is an expected outcome in the tests, not something to print a traceback for.
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        # TLS is set up per connection in its own thread, so one slow or failing handshake never
        # holds up the accept loop.
        self.request = self.server.owner._context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            # The server closes the plain socket it accepted, which the TLS one has taken over.
            self.request.close()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the tests look at `requests`

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        user, token = _basic_credentials(self.headers.get("Authorization", ""))
        authorized = token == owner.token
        target = urlsplit(self.path)
        owner._record(SeenRequest(self.command, target.path, user, authorized))
        if not authorized:
            self._respond(401, [("WWW-Authenticate", f'Basic realm="{REALM}"'), ("Content-Type", "text/plain")],
                          b"authentication required\n")
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            # Pushes are allowed for authenticated users; say so rather than rely on REMOTE_USER alone.
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.receivepack", "GIT_CONFIG_VALUE_0": "true",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": target.path,
            "QUERY_STRING": target.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user or "",
            "REMOTE_ADDR": self.client_address[0],
        }
        for header in ("Content-Encoding", "Git-Protocol"):
            if header in self.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        result = subprocess.run([str(_BACKEND)], input=body, capture_output=True, env=env, timeout=60)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if result.returncode != 0 and status == 200:
            status, headers, payload = 500, [("Content-Type", "text/plain")], result.stderr
        self._respond(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _respond(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, token = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, token
