"""How a list is answered over HTTP: pages as Kubernetes lists page (`limit`, an opaque `continue`
token), `ETag` with `If-None-Match`, and gzip when the client accepts it.

All of it is additive: a request without `limit` or `continue` gets the seed's body, `{"items": [...]}`,
byte for byte; a paged one gets `metadata` after the items, with `continue` and `remainingItemCount`
when more follow. Pages are in name order and a token says where the last page ended (the name after
which to go on), so a model that stays through a paged read is listed exactly once, whatever changes
meanwhile; there are no snapshots, so a model added or removed between two pages may or may not show.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Request, Response
from werkzeug.wsgi import wrap_file

from ..reconciler.models import naming

from .catalog import ModelList
from .pieces import GZIP_LEVEL, PackedPieces, Pieces

MAX_LIMIT_DIGITS = 9
_TOKEN_VERSION = 1


class ListQueryError(ValueError):
    """A `limit` or `continue` that cannot be used; the message says why (a 400)."""


@dataclass(frozen=True)
class ListQuery:
    limit: int | None = None  # None: no limit
    after: str | None = None  # the name the previous page ended with
    token: str | None = None  # as sent, for the page's ETag

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.token is not None


def parse_query(args: Mapping[str, str], namespace: str) -> ListQuery:
    """`limit` (a positive integer) and `continue` (a token from an earlier page of the same namespace)."""
    limit_text, token = args.get("limit"), args.get("continue")
    limit = None
    if limit_text is not None:
        if not limit_text.isascii() or not limit_text.isdigit() or len(limit_text) > MAX_LIMIT_DIGITS or int(limit_text) < 1:
            raise ListQueryError(f"invalid limit {limit_text[:40]!r}: it must be a positive integer "
                                 f"(at most {MAX_LIMIT_DIGITS} digits)")
        limit = int(limit_text)
    if token is None or token == "":
        return ListQuery(limit, None, None)
    return ListQuery(limit, _decode(token, namespace), token)


def continue_token(namespace: str, after: str) -> str:
    """The opaque token that goes on after the model `after` of `namespace`."""
    raw = json.dumps({"v": _TOKEN_VERSION, "namespace": namespace, "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(token: str, namespace: str) -> str:
    bad = ListQueryError("invalid continue token: use the metadata.continue value of the previous page, "
                         "as it was given, with the same namespace")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"v", "namespace", "after"} or data["v"] != _TOKEN_VERSION \
            or not isinstance(data["after"], str) or naming.dns1123_subdomain_error(data["after"]):
        raise bad
    if data["namespace"] != namespace:
        raise ListQueryError(f"invalid continue token: it is for namespace {str(data['namespace'])[:63]!r}, "
                             f"not {namespace!r}; a token goes on with the namespace it was made for")
    return data["after"]


def respond(model_list: ModelList, query: ListQuery, namespace: str, request: Request) -> Response:
    """The list (or a page of it) as `request` asks: 304 when its `If-None-Match` holds the current
    tag, gzip-compressed when it accepts gzip."""
    tag = model_list.tag
    if query.paged:  # a page is its own representation: its tag says which page too
        tag += "-" + hashlib.sha256(f"{query.limit}/{query.token}".encode()).hexdigest()[:16]
    compress = request.accept_encodings["gzip"] > 0
    sent_tag = tag + "-gzip" if compress else tag
    headers = {"Vary": "Accept-Encoding"}
    if request.if_none_match.contains_weak(tag) or request.if_none_match.contains_weak(tag + "-gzip"):
        response = Response(status=304, headers=headers)
        response.set_etag(sent_tag)
        return response
    if query.paged:
        items, last, remaining = model_list.page(query.after, query.limit or len(model_list.keys))
        metadata: dict[str, object] = {}
        if last is not None:
            metadata = {"continue": continue_token(namespace, last), "remainingItemCount": remaining}
        body = b'{"items":[' + items + b'],"metadata":' + json.dumps(metadata, separators=(",", ":")).encode() + b"}\n"
        if compress:
            body = gzip.compress(body, GZIP_LEVEL, mtime=0)
        response = Response(body, 200, mimetype="application/json", headers=headers)
    else:
        response = kept_body(model_list.gzipped() if compress else model_list.body, request, headers)
    if compress:
        response.headers["Content-Encoding"] = "gzip"
    response.set_etag(sent_tag)
    return response


def kept_body(body: bytes | Pieces | PackedPieces, request: Request, headers: dict[str, str] | None = None) -> Response:
    """A 200 of JSON `body`, which the API keeps (a list's), sent as it is kept: read through the WSGI
    server's file wrapper, a socket buffer at a time, never copied whole for the answer."""
    kept = Pieces((body,)) if isinstance(body, bytes) else body
    response = Response(wrap_file(request.environ, kept.reader()), 200, mimetype="application/json", headers=headers,
                        direct_passthrough=True)
    response.content_length = len(body)
    return response
