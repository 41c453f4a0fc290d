"""A stand-in for the part of GitHub's REST API that a workflow uses to keep one comment on a pull
request: issue comments (a pull request is an issue to this API).

* ``GET /repos/{owner}/{repo}/issues/{number}/comments?per_page=&page=`` -> 200, a JSON list, oldest
  first, paginated as GitHub does (``per_page`` at most 100, default 30; ``page`` from 1)
* ``POST /repos/{owner}/{repo}/issues/{number}/comments`` ``{"body"}`` -> 201 the comment
* ``PATCH /repos/{owner}/{repo}/issues/comments/{id}`` ``{"body"}`` -> 200 the comment; unknown: 404
* no ``Authorization: Bearer|token TOKEN`` with the token -> 401 ``{"message": "Bad credentials"}``;
  with ``read_only`` set, writes are 403 ``Resource not accessible by integration`` (a fork's token)
* a body that is not a JSON object with a string ``body`` -> 422

Comments are ``{"id", "body", "user": {"login"}, "created_at", "updated_at"}``. ``requests`` logs
``(method, path)``; ``comments`` holds ``{number: [comment, ...]}``.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_LIST = re.compile(r"/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<number>\d+)/comments")
_ONE = re.compile(r"/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)")


class GitHubCommentsStandin:
    def __init__(self, repository: str, token: str) -> None:
        self.repository = repository
        self.token = token
        self.read_only = False
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._next_id = 1000
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GitHubCommentsStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_PATCH(self) -> None:
                standin._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        with self._lock:
            self.requests.append((method, parts.path))
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        auth = handler.headers.get("Authorization", "")
        if auth not in (f"Bearer {self.token}", f"token {self.token}"):
            return self._send(handler, 401, {"message": "Bad credentials"})
        listing, one = _LIST.fullmatch(parts.path), _ONE.fullmatch(parts.path)
        match = listing or one
        if match is None or match["repo"] != self.repository:
            return self._send(handler, 404, {"message": "Not Found"})
        if method != "GET" and self.read_only:
            return self._send(handler, 403, {"message": "Resource not accessible by integration"})
        if listing and method == "GET":
            query = parse_qs(parts.query)
            per_page = min(int(query.get("per_page", ["30"])[0]), 100)
            page = int(query.get("page", ["1"])[0])
            with self._lock:
                found = self.comments.get(int(listing["number"]), [])
                return self._send(handler, 200, found[(page - 1) * per_page:page * per_page])
        try:
            text = json.loads(body)["body"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self._send(handler, 422, {"message": "Invalid request"})
        with self._lock:
            if listing and method == "POST":
                self._next_id += 1
                comment = {"id": self._next_id, "body": text, "user": {"login": "github-actions[bot]"},
                           "created_at": "2026-12-01T11:00:00Z", "updated_at": "2026-12-01T11:00:00Z"}
                self.comments.setdefault(int(listing["number"]), []).append(comment)
                return self._send(handler, 201, comment)
            if one and method == "PATCH":
                for comments in self.comments.values():
                    for comment in comments:
                        if comment["id"] == int(one["id"]):
                            comment.update(body=text, updated_at="2026-12-01T11:30:00Z")
                            return self._send(handler, 200, comment)
                return self._send(handler, 404, {"message": "Not Found"})
        self._send(handler, 404, {"message": "Not Found"})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
