"""The HTTP API: the seed operator's endpoints, answered from Git and live status.

Paths, status codes, JSON field names and formats are the seed's (see
`shared/seed/ollama-operator-api.md`); writes become commits pushed to the models repository.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from ..reconciler.models import naming, schema
from ..reconciler.models.desired import ModelKey
from ..reconciler.models.modelfile import ModelFields, fields_from_document
from ..reconciler.git.writer import Change, CreateModel, DeleteModel, RefreshModel, WriteRejected, Written

from . import dashboard, listing, metrics, webhook
from .catalog import ALL_NAMESPACES, Catalog
from .jsonbody import JsonBodyError, read_json
from .planning import Planner, PlanUnavailable
from .repository import ModelsRepository
from .sameorigin import HostCheck, origin_refusal
from .webhook import WebhookConfig, WebhookRejected

log = logging.getLogger("ollama_gitops.api")

MAX_BODY_BYTES = 64 * 1024
WRITE_QUEUE_TIMEOUT = 60.0  # seconds a write may wait for its turn before a 503
MODELS_PATH = "/api/v1/models/"
COMMIT_HEADER = "X-Git-Commit"  # on every write's answer: the commit pushed
OPEN_PATHS = frozenset({"/health", "/readiness", "/metrics"})
# Paths that authenticate their callers themselves, without the API key: a Git host cannot send one.
SELF_AUTHENTICATED_PATHS = frozenset({webhook.WEBHOOK_PATH})


@dataclass(frozen=True)
class ApiSettings:
    api_key: str | None
    namespace: str = "default"
    webhook: WebhookConfig | None = None  # None: webhooks are off (no secret configured)
    hosts: HostCheck | None = None  # None: any Host is answered (an API key is set)


def create_app(
    settings: ApiSettings,
    catalog: Catalog,
    repository: ModelsRepository,
    on_written: Callable[[], None] = lambda: None,
    max_writers: int = 8,
    on_push: Callable[[], None] | None = None,
    next_cycle: Callable[[], str | None] = lambda: None,
    planner: Planner | None = None,
) -> Flask:
    """The WSGI application. `on_written` runs after every acknowledged write (to start a cycle);
    `on_push` after every accepted webhook push (to start one at once, or have the reconciler do
    so; it raises `webhook.TriggerUnavailable` when it cannot), and is needed when webhooks are on.
`planner` answers `GET /api/v1/plan` (a 503 without one).

    At most `max_writers` requests wait on a push at once, so that a burst of writes never takes
    every server thread from reads and health probes; more wait their turn for a bounded time.
    """
    writers = threading.BoundedSemaphore(max_writers)
    if settings.webhook is not None and on_push is None:
        raise ValueError("webhooks need on_push: something to start a cycle with")

    def write(change: Change) -> Written:
        if not writers.acquire(timeout=WRITE_QUEUE_TIMEOUT):
            raise WriteRejected(503, "too many writes in flight; try again")
        try:
            written = repository.write(change)
        finally:
            writers.release()
        try:
            on_written()
        except Exception:  # the commit is pushed: the answer says so, whatever fails after it
            log.exception("action=after-write-failed commit=%s", written.commit[:12])
        return written

    def written_view(namespace: str, name: str, written: Written) -> dict[str, Any]:
        """The model as a pushed write leaves it: live status when it can be read, else Pending."""
        try:
            view = catalog.get(namespace, name)
        except Exception:
            log.exception("action=answer-failed commit=%s model=%s/%s", written.commit[:12], namespace, name)
            view = None
        if view is None:
            fields = written.fields
            assert fields is not None, "a refresh writes the model's file"
            view = catalog.new_view(ModelKey(namespace, name), fields)
        return view
    app = Flask("ollama_gitops.api")
    app.json.sort_keys = False  # keep the seed's field order
    app.json.compact = True
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    openapi = _openapi_document()

    def _namespace() -> str:
        return _namespace_of(settings.namespace)

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        host = request.headers.get("Host")
        # A webhook is authenticated by its signature, which no page can make: it passes under
        # whatever public name a proxy or tunnel gives the API.
        if settings.hosts is not None and request.path not in SELF_AUTHENTICATED_PATHS:
            refusal = settings.hosts.refusal(host)
            if refusal is not None:
                return _error(refusal, 421)
        refusal = origin_refusal(request.method, request.headers.get("Origin"), host)
        if refusal is not None:
            return _error(refusal, 403)
        if request.path in SELF_AUTHENTICATED_PATHS:
            # Before the body is read: push payloads are larger than the API's own bodies.
            request.max_content_length = webhook.MAX_BODY_BYTES
            return None
        if settings.api_key is None or request.path in OPEN_PATHS or dashboard.is_open(request.path):
            return None
        offered = request.headers.get("X-API-Key", "")
        if hmac.compare_digest(offered.encode(), settings.api_key.encode()):
            return None
        return _text("Unauthorized\n", 401)

    @app.before_request
    def encoded_slash() -> Response | None:
        # Werkzeug decodes %2F into '/' before routing, so `a%2Fb` would miss the model routes and be
        # a 404: the raw path says what was asked for, a name with a slash, which is a 400.
        raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI") or ""
        rest = raw.partition("?")[0].partition(MODELS_PATH)[2] if raw.startswith(MODELS_PATH) else ""
        if "%2f" in rest.lower():
            name = urllib.parse.unquote(rest.removesuffix("/refresh"))
            return _error(f"invalid model name {name[:300]!r}: a name has no '/'", 400)
        return None

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        metrics.DURATION.labels(request.method, route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.get("/health")
    def health() -> Response:
        return _text("OK", 200)

    @app.get("/readiness")
    def readiness() -> Response:
        if repository.desired is None:
            reason = repository.last_error or "the models repository has not been fetched yet"
            return _text(f"not ready: {reason}", 503)
        return _text("Ready", 200)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(), 200, mimetype=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/openapi.json")
    def openapi_document() -> Response:
        return Response(openapi, 200, mimetype="application/json")

    @app.get("/api/v1/models")
    def list_models() -> Response:
        if request.args.get("namespace") == ALL_NAMESPACES:  # every namespace (additive: the dashboard's list)
            return listing.kept_body(catalog.list_all(), request)
        namespace = _namespace()
        try:
            query = listing.parse_query(request.args, namespace)
        except listing.ListQueryError as exc:
            raise _BadInput(str(exc)) from None
        return listing.respond(catalog.model_list(namespace), query, namespace, request)

    @app.get("/api/v1/models/<name>")
    def get_model(name: str) -> Response:
        namespace = _namespace()
        view = catalog.get(namespace, _model_name(name))
        if view is None:
            return _not_found(catalog, namespace, name)
        return _json(view, 200)

    @app.post("/api/v1/models")
    def create_model() -> Response:
        namespace = _namespace()
        fields = _model_fields(request.get_data())
        written = write(CreateModel(namespace, fields))
        name = naming.resource_name(fields.name, fields.tag)
        return _committed(_json(catalog.new_view(ModelKey(namespace, name), fields), 201), written)

    @app.delete("/api/v1/models/<name>")
    def delete_model(name: str) -> Response:
        namespace = _namespace()
        # What GET cannot show, DELETE does not delete: a broken file that never had a good version
        # is no model yet (fix or remove it in Git), and the two answers must agree.
        if catalog.unshown_file(namespace, _model_name(name)) is not None:
            return _not_found(catalog, namespace, name)
        kept = catalog.kept_at_zero(namespace, name)
        if kept is not None:  # shown, but there is no file left to remove
            return _error(f"model {name} has no file left to delete: {kept}", 409)
        return _committed(Response(status=204), write(DeleteModel(namespace, name)))

    @app.post("/api/v1/models/<name>/refresh")
    def refresh_model(name: str) -> Response:
        namespace = _namespace()
        # Milliseconds: two refreshes within one second must still differ, or the second pulls nothing.
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        written = write(RefreshModel(namespace, _model_name(name), now))
        return _committed(_json(written_view(namespace, name, written), 202), written)

    @app.get("/api/v1/status")
    def status() -> Response:
        return _json(status_view(catalog, repository, next_cycle), 200)

    @app.get("/api/v1/servers")
    def list_servers() -> Response:
        return Response(catalog.servers_json(), 200, mimetype="application/json")

    @app.get("/api/v1/plan")
    def plan_ref() -> Response:
        ref = request.args.get("ref")
        if not ref:
            return _error("the query parameter 'ref' is required: a branch, tag, ref or commit", 400)
        if planner is None:
            return _error("this API cannot plan", 503)
        try:
            found = planner.plan(ref)
        except PlanUnavailable as exc:
            return _error(exc.message, exc.status)
        return _json(found.to_json(), 200)

    @app.post(webhook.WEBHOOK_PATH)
    def receive_webhook() -> Response:
        if settings.webhook is None:
            return _error("webhooks are off: set OLLAMA_GITOPS_WEBHOOK_SECRET or --webhook-secret-file", 404)
        body = request.get_data()
        try:
            delivery, verdict = webhook.receive(settings.webhook, request.headers, body)
        except WebhookRejected as rejected:
            _log_webhook(rejected.envelope, None, "rejected", rejected.message, logging.WARNING)
            return _error(rejected.message, rejected.status)
        envelope = delivery.envelope
        if not verdict.accepted:
            _log_webhook(envelope, delivery.ref, verdict.status, verdict.reason)
            return _json({"status": verdict.status, "reason": verdict.reason}, 200)
        try:
            on_push()  # type: ignore[misc]  # set whenever webhooks are on
        except webhook.TriggerUnavailable as exc:
            _log_webhook(envelope, delivery.ref, "unavailable", str(exc), logging.WARNING)
            return _error(str(exc), 503)
        _log_webhook(envelope, delivery.ref, "accepted", None)
        return _json({"status": "accepted"}, 202)

    @app.errorhandler(_BadInput)
    def bad_input(error: _BadInput) -> Response:
        return _error(error.message, error.status)

    @app.errorhandler(WriteRejected)
    def rejected(error: WriteRejected) -> Response:
        return _error(error.message, error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if request.path.startswith("/api/"):
            response = _error(_HTTP_MESSAGES.get(status, error.name.lower()), status)
        else:
            response = _text(f"{status} {error.name.lower()}\n", status)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            return _error("internal server error", 500)
        return _text("internal server error\n", 500)

    return app


def status_view(catalog: Catalog, repository: ModelsRepository,
                next_cycle: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    """The sync summary as GET /api/v1/status answers it (and the events stream sends it);
    `nextCycleTime` only where the schedule is this process's (`serve`)."""
    sync = catalog.sync()
    desired = repository.desired
    view = {
        "lastFetchedCommit": desired.commit if desired else None,
        "lastAppliedCommit": sync.last_applied_commit,
        "lastCycleTime": sync.last_cycle_at,
        "lastCycleDurationSeconds": sync.last_cycle_duration,
        "lastCycleOutcome": sync.last_cycle_outcome,
        "lastCycleMessage": sync.last_cycle_message,
        "gitError": repository.last_error,
        "repository": repository.repo.display_url,
        "branch": repository.repo.branch,
        "problems": [{"path": p.path, "line": p.line, "message": p.message}
                     for p in (desired.problems if desired else sync.problems)],
    }
    upcoming = next_cycle()
    if upcoming is not None:
        view["nextCycleTime"] = upcoming
    return view


def _log_webhook(envelope: webhook.Envelope, ref: str | None, outcome: str, reason: str | None,
                 level: int = logging.INFO) -> None:
    # Never the secret, a signature or a token: who sent what, and what came of it.
    metrics.WEBHOOKS.labels(envelope.provider, outcome).inc()
    log.log(level, "action=webhook provider=%s delivery=%s event=%r ref=%r outcome=%s reason=%r",
            envelope.provider, envelope.delivery_id or "-", envelope.event[:100], (ref or "")[:200], outcome, reason)


def _openapi_document() -> bytes:
    """The OpenAPI document, with the model file schema put in from its single source."""
    document = json.loads(resources.files(__package__).joinpath("openapi.json").read_text("utf-8"))
    model_file = dict(schema.model_schema())
    model_file.pop("$schema", None)
    document["components"]["schemas"]["ModelFile"] = model_file
    return json.dumps(document, indent=1).encode()


_HTTP_MESSAGES = {404: "not found", 405: "method not allowed", 413: "request body too large", 500: "internal server error"}


class _BadInput(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _namespace_of(default: str) -> str:
    namespace = request.args.get("namespace") or default
    problem = naming.dns1123_label_error(namespace)
    if problem:
        raise _BadInput(f"invalid namespace {namespace[:100]!r}: it {problem}")
    return namespace


def _model_name(name: str) -> str:
    """A model name from a path: a Kubernetes resource name, so never `..`, `/` or anything like it."""
    problem = naming.dns1123_subdomain_error(name)
    if problem:
        raise _BadInput(f"invalid model name {name[:300]!r}: it {problem}")
    return name


def _model_fields(body: bytes) -> ModelFields:
    try:
        document = read_json(body) if body else None
    except JsonBodyError as exc:
        raise _BadInput(f"invalid request: {exc}") from None
    if not isinstance(document, dict):
        raise _BadInput("invalid request: the body must be a JSON object with 'name' and 'tag'")
    errors = schema.validate(document)
    if errors:
        raise _BadInput("; ".join(e.message for e in errors))
    name = naming.resource_name(document["name"], document["tag"])
    problem = naming.dns1123_subdomain_error(name)
    if problem:
        raise _BadInput(f"model {document['name']}:{document['tag']} gives the resource name {name!r}, which {problem}")
    return fields_from_document(document)


def _not_found(catalog: Catalog, namespace: str, name: str) -> Response:
    """404 `model not found: NAME`, as the seed says it, with the file's error when a broken file is why."""
    why = catalog.unshown_file(namespace, name)
    return _error(f"model not found: {name}" + (f" (its file is invalid: {why})" if why else ""), 404)


def _committed(response: Response, written: Written) -> Response:
    """A write's answer, naming the commit it pushed (the dashboard shows it; the seed's clients ignore it)."""
    response.headers[COMMIT_HEADER] = written.commit
    return response


def _json(payload: Any, status: int) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")) + "\n", status, mimetype="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def _text(body: str, status: int) -> Response:
    response = Response(body, status, content_type="text/plain; charset=utf-8")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
