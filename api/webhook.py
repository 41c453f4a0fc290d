"""Webhook deliveries: who sent one, whether it carries the shared secret, and whether it is a push
to the tracked repository and branch.

Pure: headers and the raw body in, a typed answer out; the Flask route in `app.py` only wires it.

A delivery is only ever a trigger. The cycle it starts fetches the branch from Git and applies what
Git says, never anything read from the payload; so a delivery replayed as it was can at worst start
one more fetch, and a payload is trusted for nothing but the choice to start one. The signature is
checked before the body is parsed at all: an unauthenticated body is never read.

Providers, told apart by their event header (Forgejo and Gitea also send GitHub's and Gogs's
headers, so the most specific is tried first):

| provider | event header | secret check |
| --- | --- | --- |
| Forgejo | `X-Forgejo-Event` | `X-Forgejo-Signature` (or `X-Gitea-Signature`): hex HMAC-SHA256 of the body |
| Gitea | `X-Gitea-Event` | `X-Gitea-Signature`: hex HMAC-SHA256 of the body |
| Gogs | `X-Gogs-Event` | `X-Gogs-Signature`: hex HMAC-SHA256 of the body |
| GitLab | `X-Gitlab-Event` | `X-Gitlab-Token`: the secret itself |
| GitHub | `X-GitHub-Event` | `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the body |
| generic | none | `X-Ollama-Gitops-Signature`: `sha256=` and the hex HMAC-SHA256 of the body |

The generic form's body is `{"repository": "<URL or path>", "ref": "refs/heads/<branch>"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from .jsonbody import read_json

WEBHOOK_PATH = "/api/v1/webhook"
MAX_BODY_BYTES = 1024 * 1024  # GitHub caps its payloads at 25 MB, but a push of one branch is far below
GENERIC_SIGNATURE_HEADER = "X-Ollama-Gitops-Signature"
SIGNATURE_MISMATCH = "signature does not match"  # the only thing said about a failed check

Kind = Literal["push", "ping", "other"]
Status = Literal["accepted", "ignored", "pong"]


@dataclass(frozen=True)
class WebhookConfig:
    """What deliveries are checked against: the shared secret, and the repository and branch followed."""

    secret: str = field(repr=False)
    repository: str
    branch: str


@dataclass(frozen=True)
class Envelope:
    """What the headers say about a delivery, before anything in it is trusted (for logs only)."""

    provider: str  # forgejo, gitea, gogs, gitlab, github, generic; "unknown" when none matched
    event: str
    delivery_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    """An authenticated delivery: its kind, and for a push the ref and the repository's URLs."""

    envelope: Envelope
    kind: Kind
    ref: str | None = None
    repositories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What to do with an authenticated delivery, and why."""

    status: Status
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


class WebhookRejected(Exception):
    """A delivery refused: 401 when the secret check failed, 400 when the payload is malformed."""

    def __init__(self, status: int, message: str, envelope: Envelope) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.envelope = envelope


class TriggerUnavailable(Exception):
    """An accepted push could not be passed on to the reconciler; the message says why (a 503)."""


@dataclass(frozen=True)
class RepositoryId:
    """A repository as a webhook and `--repo` may both name it: the host in lower case (empty for a
    local path) and the path as written, without scheme, user, port, `.git` and slashes around it."""

    host: str
    path: str


# -- providers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Provider:
    name: str
    event_header: str | None  # None: the generic form, recognised by its signature header
    delivery_header: str | None
    signature_headers: tuple[str, ...]  # the first one present is checked
    check: Literal["hmac-prefixed", "hmac-hex", "token"]
    push_events: frozenset[str]
    ping_events: frozenset[str]
    url_fields: tuple[tuple[str | None, str], ...]  # (object or None for the top level, field)


_GITEA_URLS = (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url"))
_PROVIDERS = (
    _Provider("forgejo", "X-Forgejo-Event", "X-Forgejo-Delivery", ("X-Forgejo-Signature", "X-Gitea-Signature"),
              "hmac-hex", frozenset({"push"}), frozenset(), _GITEA_URLS),
    _Provider("gitea", "X-Gitea-Event", "X-Gitea-Delivery", ("X-Gitea-Signature",),
              "hmac-hex", frozenset({"push"}), frozenset(), _GITEA_URLS),
    _Provider("gogs", "X-Gogs-Event", "X-Gogs-Delivery", ("X-Gogs-Signature",),
              "hmac-hex", frozenset({"push"}), frozenset(), _GITEA_URLS),
    _Provider("gitlab", "X-Gitlab-Event", "X-Gitlab-Event-UUID", ("X-Gitlab-Token",),
              "token", frozenset({"Push Hook"}), frozenset(),
              (("project", "git_http_url"), ("project", "git_ssh_url"), ("project", "web_url"),
               ("project", "http_url"), ("project", "ssh_url"), ("project", "url"), ("project", "homepage"),
               ("repository", "git_http_url"), ("repository", "git_ssh_url"), ("repository", "url"),
               ("repository", "homepage"))),
    _Provider("github", "X-GitHub-Event", "X-GitHub-Delivery", ("X-Hub-Signature-256",),
              "hmac-prefixed", frozenset({"push"}), frozenset({"ping"}),
              (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url"),
               ("repository", "git_url"), ("repository", "url"))),
    _Provider("generic", None, None, (GENERIC_SIGNATURE_HEADER,),
              "hmac-prefixed", frozenset({"push"}), frozenset(), ((None, "repository"),)),
)


def sign(secret: str, body: bytes) -> str:
    """The `sha256=<hex>` signature of `body` that GitHub and the generic form send."""
    return "sha256=" + _hmac_hex(secret, body)


def envelope_of(headers: Mapping[str, str]) -> Envelope:
    """Which provider sent a delivery, its event and its delivery id, from the headers alone."""
    provider = _provider(_lower(headers))
    if provider is None:
        return Envelope("unknown", "")
    return _envelope(provider, _lower(headers))


def read_delivery(headers: Mapping[str, str], body: bytes, secret: str) -> Delivery:
    """Check a delivery against the secret (in constant time), then read what it is about.

    Raises `WebhookRejected`: 401 when the secret check fails or nothing in the headers can be
    checked, 400 when an authenticated push payload is malformed.
    """
    lowered = _lower(headers)
    provider = _provider(lowered)
    if provider is None:
        raise WebhookRejected(401, SIGNATURE_MISMATCH, Envelope("unknown", ""))
    envelope = _envelope(provider, lowered)
    offered = next((lowered[h.lower()] for h in provider.signature_headers if h.lower() in lowered), None)
    if offered is None or not _verified(provider, offered, body, secret):
        raise WebhookRejected(401, SIGNATURE_MISMATCH, envelope)
    if envelope.event in provider.ping_events:
        document = _document(body, lowered.get("content-type", ""), envelope, required=False)
        return Delivery(envelope, "ping", repositories=_urls(provider, document))
    if envelope.event not in provider.push_events:
        return Delivery(envelope, "other")  # its body is of no interest: not even parsed
    document = _document(body, lowered.get("content-type", ""), envelope, required=True)
    ref = document.get("ref")
    if not isinstance(ref, str) or not ref:
        raise WebhookRejected(400, "invalid payload: a push must name its 'ref'", envelope)
    urls = _urls(provider, document)
    if not urls:
        raise WebhookRejected(400, "invalid payload: a push must name its repository's URL", envelope)
    return Delivery(envelope, "push", ref, urls)


def judge(delivery: Delivery, tracked: RepositoryId | None, branch: str) -> Verdict:
    """Accept a push to the tracked repository and branch; acknowledge everything else."""
    matches = tracked is not None and any(repository_id(url) == tracked for url in delivery.repositories)
    if delivery.kind == "ping":
        if delivery.repositories and not matches:
            return Verdict("pong", "webhook configured, but this is not the tracked repository: its pushes "
                                   "will be ignored")
        return Verdict("pong", "webhook configured")
    if delivery.kind != "push":
        return Verdict("ignored", f"{_shown(delivery.envelope.event)!r} events are ignored: only pushes start a cycle")
    if not matches:
        return Verdict("ignored", f"push to another repository ({_shown(delivery.repositories[0])})")
    wanted = f"refs/heads/{branch}"
    if delivery.ref != wanted:
        return Verdict("ignored", f"push to {_shown(delivery.ref or '')}, not to {wanted}")
    return Verdict("accepted")


def receive(config: WebhookConfig, headers: Mapping[str, str], body: bytes) -> tuple[Delivery, Verdict]:
    """`read_delivery` then `judge`, against `config` (raises `WebhookRejected`)."""
    delivery = read_delivery(headers, body, config.secret)
    return delivery, judge(delivery, repository_id(config.repository), config.branch)


# -- repository URLs --------------------------------------------------------------------------------

_SCP_LIKE = re.compile(r"(?:[^@/]+@)?(?P<host>[^:/\[\]]+):(?P<path>.*)", re.DOTALL)


def repository_id(url: str) -> RepositoryId | None:
    """What identifies the repository that `url` names, so that every way of writing one URL compares
    equal: `https://GitHub.com/Org/Repo.git/`, `git@github.com:Org/Repo`,
    `ssh://git@github.com:22/Org/Repo.git` and `http://user:pw@github.com/Org/Repo` are one repository.

    Scheme, user info and port are dropped (the same repository is served over HTTPS and SSH, often
    on different ports); the host is lowered (DNS ignores case), the path keeps its case (servers
    may not ignore it). A local path and its `file://` URL are one repository; so are `/x/y`,
    `/x/y.git` and `/x/y/.git`, as git itself reads them. None when `url` names nothing.
    """
    text = url.strip()
    if not text or any(c in text for c in "\r\n\t\0"):
        return None
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
        except ValueError:  # a broken IPv6 literal or port
            return None
        if parts.scheme.lower() == "file" and host in ("", "localhost"):
            return _local(unquote(parts.path))
        path = _remote_path(unquote(parts.path))
        return RepositoryId(host, path) if host and path else None
    scp = _SCP_LIKE.fullmatch(text)
    if scp is not None:  # as git decides: a colon before any slash makes it [user@]host:path
        path = _remote_path(scp["path"])
        return RepositoryId(scp["host"].lower(), path) if path else None
    return _local(text)


def _remote_path(path: str) -> str:
    path = re.sub(r"/{2,}", "/", path).strip("/")
    return path[: -len(".git")].rstrip("/") if path.endswith(".git") else path


def _local(path: str) -> RepositoryId | None:
    if not path:
        return None
    path = posixpath.normpath(path)
    for suffix in ("/.git", ".git"):
        if path.endswith(suffix) and len(path) > len(suffix):
            path = path[: -len(suffix)]
            break
    return RepositoryId("", path)


# -- helpers ----------------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _provider(lowered: Mapping[str, str]) -> _Provider | None:
    for provider in _PROVIDERS:
        header = provider.event_header or provider.signature_headers[0]
        if header.lower() in lowered:
            return provider
    return None


def _envelope(provider: _Provider, lowered: Mapping[str, str]) -> Envelope:
    event = lowered.get(provider.event_header.lower(), "") if provider.event_header else "push"
    delivery = lowered.get(provider.delivery_header.lower()) if provider.delivery_header else None
    return Envelope(provider.name, event.strip(), _token(delivery) if delivery else None)


def _verified(provider: _Provider, offered: str, body: bytes, secret: str) -> bool:
    offered = offered.strip()
    if provider.check == "token":
        # Digests of both sides: equal lengths, so not even the secret's length shows in the timing.
        return hmac.compare_digest(_digest(offered), _digest(secret))
    if provider.check == "hmac-prefixed":
        if not offered.lower().startswith("sha256="):
            return False
        offered = offered[len("sha256="):]
    expected = _hmac_hex(secret, body).encode()
    return hmac.compare_digest(offered.lower().encode("utf-8", "surrogateescape"), expected)


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def _document(body: bytes, content_type: str, envelope: Envelope, *, required: bool) -> dict[str, Any]:
    """The JSON object of a payload; GitHub's `application/x-www-form-urlencoded` form carries it in
    the field `payload` (the signature is over the form as sent)."""
    try:
        text = body.decode("utf-8")
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            text = parse_qs(text, strict_parsing=True).get("payload", [""])[0]
        document = read_json(text)
    except (UnicodeDecodeError, ValueError) as exc:  # JsonBodyError is a ValueError
        if not required:
            return {}
        raise WebhookRejected(400, f"invalid payload: not a JSON document ({_shown(str(exc))})", envelope) from None
    if not isinstance(document, dict):
        if not required:
            return {}
        raise WebhookRejected(400, "invalid payload: it must be a JSON object", envelope)
    return document


def _urls(provider: _Provider, document: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    for container, name in provider.url_fields:
        holder = document if container is None else document.get(container)
        value = holder.get(name) if isinstance(holder, Mapping) else None
        if isinstance(value, str) and value.strip() and value not in found:
            found.append(value)
    return tuple(found)


def _token(value: str) -> str:
    """A header value safe for a log line: what a delivery id is made of, bounded."""
    return re.sub(r"[^A-Za-z0-9._:-]", "", value)[:64]


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
