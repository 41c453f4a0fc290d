"""A protocol-faithful stand-in Kubernetes API server for tests.

`KubeStandin` is a real HTTP/1.1 server on 127.0.0.1 that the real ``kubernetes`` Python client
talks to. It serves, with the semantics of kube-apiserver where a controller depends on them:

- ``ollamamodels.ollama.smithforge.dev/v1alpha1`` (kind ``OllamaModel``, namespaced, ``/status``
  subresource, custom-resource rules: ``generation``, no unconditional PUT, no strategic merge);
- ``coordination.k8s.io/v1`` Leases (enough for ``kubernetes.leaderelection`` with ``LeaseLock``);
- core ``v1`` Events and ``events.k8s.io/v1`` Events (validated like the real server, recorded);
- core ``v1`` Namespaces (``default``, ``kube-system``, ``kube-public`` and ``kube-node-lease``
  exist from the start; deleting one terminates it and deletes its content);
- core ``v1`` ConfigMaps (keys of ``data`` and ``binaryData`` validated, string values, base64
  ``binaryData``, the 1 MiB limit, ``immutable``);
- core ``v1`` Pods and Nodes (cluster-scoped) and ``discovery.k8s.io/v1`` EndpointSlices, for the
  fleet's discovery of a Service's servers: stored as written (no ``/status`` subresource, no
  defaulting), EndpointSlices validated in what a reader depends on (``addressType``, addresses,
  port protocols), the field selectors of Pods (``spec.nodeName``, ``status.phase``, ...) and Nodes
  (``spec.unschedulable``) as the real server has them; a Pod is deleted at once (there is no
  kubelet to end it gracefully) and the answer is the deleted Pod, as its registry returns it;
- discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}[/{version}]``, ``/version``).

Behaviour modelled on kube-apiserver:

- one global ``resourceVersion`` counter (etcd's revision; ``descending_versions`` spells it as a
  shrinking number, to catch clients that order versions), a string, bumped by every write; a
  write that changes nothing (ignoring managedFields timestamps) is a no-op: no bump, no event;
- POST: 201 with the stored object, ``uid``/``creationTimestamp``/``resourceVersion`` (and
  ``generation: 1`` for the custom resource); 409 AlreadyExists; ``generateName``; 404
  ``namespaces "x" not found`` when the namespace is missing, 403 when it is terminating;
  422 Invalid for bad names, labels, finalizers (and, when a CRD schema is given, for the schema);
  500 when ``metadata.resourceVersion`` is set on a create;
- PUT: 409 Conflict on a stale ``metadata.resourceVersion``; for the custom resource a PUT without
  one is 422 (``must be specified for an update``: CRs do not allow unconditional updates); for
  Leases, Events and Namespaces a PUT without one is unconditional; 404 when absent (no create on
  update);
- PATCH: ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json`` (RFC 6902),
  ``application/apply-patch+yaml`` (server-side apply: ``fieldManager`` required, conflicts with
  other managers answered 409 unless ``force=true``, fields the manager applied before and omits
  now are removed, creates when absent and answers 201), and for built-in types only
  ``application/strategic-merge-patch+json`` (treated as a merge patch; 415 for the custom resource,
  as the real server does);
- ``metadata.generation`` of the custom resource bumps when anything other than ``metadata`` and
  ``status`` changes, and once when ``deletionTimestamp`` is set (as the real server does);
- ``/status``: writes to the main resource keep the stored ``status``; writes to ``/status`` change
  only ``status``;
- DELETE: with finalizers, sets ``deletionTimestamp`` and ``deletionGracePeriodSeconds: 0`` and
  answers 200 with the object; the object goes when an update removes the last finalizer;
  no new finalizers may be added while deleting (422); without finalizers, 200 with a ``Status``
  Success (the real answer for custom resources); 404 when absent; ``preconditions`` honoured;
- list: ``labelSelector`` (``=``, ``==``, ``!=``, exists, ``!``, ``in``, ``notin``, ``>``, ``<``),
  ``fieldSelector`` (``metadata.name``, ``metadata.namespace``; for core v1 Events also the
  ``involvedObject.*``, ``reason``, ``type``, ``source`` and ``reportingComponent`` fields, as
  ``kubectl describe`` selects them; for Pods and Nodes theirs; any other field of those three
  kinds is 400 ``field label not supported``), ``limit``/``continue``;
- watch: chunked JSON lines; from a ``resourceVersion`` the events after it are replayed from a
  bounded per-resource history; without one (or ``"0"``) synthetic ADDED events for the current
  objects come first; label-selector transitions turn into ADDED/DELETED like the watch cache;
  ``allowWatchBookmarks`` gives BOOKMARK events every ``bookmark_interval`` seconds and on
  `KubeStandin.send_bookmark`; a version older than the history gets an ERROR event with a 410
  Expired ``Status`` (then the stream ends); ``timeoutSeconds`` and `KubeStandin.stop` end the
  stream cleanly;
- ``dryRun`` on writes computes the answer without storing it.

Simplifications (documented, not hidden): managedFields are computed by the server (what a client
sends in ``metadata.managedFields`` is ignored), lists are atomic for server-side apply except
``metadata.finalizers`` (a set), ``continue`` tokens page over current data (not a snapshot), the two
Event APIs are stored apart, there is no authentication, admission or garbage collector.

Test controls: `KubeStandin.inject` (answer a ``Status`` with a chosen code), `KubeStandin.delay`,
`KubeStandin.request_log` / `KubeStandin.requests` / `KubeStandin.count`,
`KubeStandin.expire_history`, `KubeStandin.send_bookmark`, `KubeStandin.objects`,
`KubeStandin.events`.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import random
import re
import select
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import yaml

__all__ = ["KubeStandin", "RequestRecord", "GROUP", "VERSION", "PLURAL", "KIND"]

GROUP = "ollama.smithforge.dev"
VERSION = "v1alpha1"
PLURAL = "ollamamodels"
KIND = "OllamaModel"

Obj = dict[str, Any]

# ------------------------------------------------------------------------------------------------
# Resource types


@dataclass(frozen=True)
class _ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    custom: bool = False  # custom-resource rules (generation, no unconditional update, no SMP)
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}/{self.version}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def qualified_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def details(self, name: str, **extra: Any) -> dict:
        d: dict[str, Any] = {"name": name}
        if self.group:
            d["group"] = self.group
        d["kind"] = self.plural
        d.update(extra)
        return d


OLLAMAMODELS = _ResourceType(GROUP, VERSION, PLURAL, "ollamamodel", KIND, True, custom=True,
                             status_subresource=True, short_names=("om",))
LEASES = _ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True)
CORE_EVENTS = _ResourceType("", "v1", "events", "event", "Event", True, short_names=("ev",))
EVENTS_V1 = _ResourceType("events.k8s.io", "v1", "events", "event", "Event", True, short_names=("ev",))
NAMESPACES = _ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, short_names=("ns",))
CONFIGMAPS = _ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, short_names=("cm",))
# What the fleet's discovery reads (a Service's servers, their pods' and nodes' labels). Their status
# is stored as written (no /status subresource here: tests set the objects up whole).
PODS = _ResourceType("", "v1", "pods", "pod", "Pod", True, short_names=("po",))
NODES = _ResourceType("", "v1", "nodes", "node", "Node", False, short_names=("no",))
ENDPOINTSLICES = _ResourceType("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", True)

_TYPES = (OLLAMAMODELS, LEASES, CORE_EVENTS, EVENTS_V1, NAMESPACES, CONFIGMAPS, PODS, NODES, ENDPOINTSLICES)
_BY_GVR = {(t.group, t.version, t.plural): t for t in _TYPES}

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

# ------------------------------------------------------------------------------------------------
# Errors as kube-apiserver Status objects

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid",
    429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> Obj:
        return _status_body(self.code, self.reason, self.message, self.details)


def _status_body(code: int, reason: str, message: str, details: dict | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason}
    if details:
        body["details"] = details
    body["code"] = code
    return body


def _not_found(rt: _ResourceType, name: str) -> _ApiError:
    return _ApiError(404, "NotFound", f'{rt.qualified_resource} "{name}" not found', rt.details(name))


def _namespace_not_found(ns: str) -> _ApiError:
    return _not_found(NAMESPACES, ns)


def _conflict(rt: _ResourceType, name: str, why: str = "the object has been modified; please apply "
              "your changes to the latest version and try again") -> _ApiError:
    return _ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified_resource} "{name}": {why}',
                     rt.details(name))


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, "BadRequest", message)


@dataclass
class _Cause:
    field: str
    kind: str  # Invalid | Required | Forbidden | TooLong | NotSupported
    detail: str
    value: Any = None

    def message(self) -> str:
        if self.kind == "Invalid":
            return f"Invalid value: {_go_repr(self.value)}: {self.detail}"
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "Forbidden":
            return f"Forbidden: {self.detail}"
        if self.kind == "TooLong":
            return f"Too long: {self.detail}"
        return f"Unsupported value: {_go_repr(self.value)}: {self.detail}"

    def reason(self) -> str:
        return {"Invalid": "FieldValueInvalid", "Required": "FieldValueRequired",
                "Forbidden": "FieldValueForbidden", "TooLong": "FieldValueTooLong"}.get(self.kind, "FieldValueNotSupported")


def _go_repr(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _invalid(rt: _ResourceType, name: str, causes: list[_Cause]) -> _ApiError:
    parts = [f"{c.field}: {c.message()}" for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.kind
    details["causes"] = [{"reason": c.reason(), "message": c.message(), "field": c.field} for c in causes]
    return _ApiError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {joined}', details)


# ------------------------------------------------------------------------------------------------
# Small helpers


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
# What Go's time.Parse(RFC3339Micro, s) accepts (metav1.MicroTime.UnmarshalJSON): the layout's
# ".000000" wants exactly six digits after a '.' (or ','), so a whole second without a fraction,
# fewer digits or more are all refused; the zone is `Z` or `+hh:mm` / `-hh:mm`.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[.,]\d{6}(Z|[+-]\d{2}:\d{2})$")


def _micro_time(value: Any, rt: "_ResourceType | None" = None) -> Any:
    """Normalise a MicroTime the way the server re-serialises it (UTC, microseconds, Z), or answer
    400 for what the real server cannot decode (the body fails to decode into the Go type)."""
    if isinstance(value, str) and rt is not None and not _MICRO_TIME.match(value):
        rest = value[19:] if len(value) > 19 else value
        raise _bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: parsing time '
                           f'"{value}" as "{RFC3339_MICRO}": cannot parse "{rest}" as ".000000"')
    return _utc(value.replace(",", ".", 1) if isinstance(value, str) else value, "%Y-%m-%dT%H:%M:%S.%fZ")


def _time(value: Any) -> Any:
    """Normalise a metav1.Time (UTC, seconds, Z)."""
    return _utc(value, "%Y-%m-%dT%H:%M:%SZ")


def _utc(value: Any, layout: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime(layout)


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
                   "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
_CONFIG_MAP_MAX_BYTES = 1024 * 1024  # corev1.MaxSecretSize, which ConfigMaps share
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
              "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")


def _qualified_name_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key:
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return "prefix part " + _SUBDOMAIN_MSG
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')" if name and len(name) <= 63
                else "name part must be no more than 63 characters" if name else "name part must be non-empty")
    return None


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value: what `copy.deepcopy` gives, several times faster (stored objects
    are copied on every write and read, and the benchmarks measure the product, not this)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _copy_object(obj: Obj) -> Obj:
    """A deep copy of a stored object without `metadata.managedFields`, the biggest part of it, which
    the store renders afresh from its field managers whenever it commits an object."""
    copied = {k: _copy(v) for k, v in obj.items() if k != "metadata"}
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        copied["metadata"] = {k: _copy(v) for k, v in meta.items() if k != "managedFields"}
    elif "metadata" in obj:
        copied["metadata"] = meta
    return copied


def _deep_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return _copy(patch)
    result = _copy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _merge_patch(result.get(k), v)
    return result


class _PatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902 JSON patch."""
    doc = _copy(doc)

    def parent_of(tokens: list[str]) -> tuple[Any, str]:
        if not tokens:
            raise _PatchError("cannot operate on the document root")
        node = doc
        for t in tokens[:-1]:
            if isinstance(node, dict):
                if t not in node:
                    raise _PatchError(f"doc is missing path: {'/' + '/'.join(tokens)}")
                node = node[t]
            elif isinstance(node, list):
                try:
                    node = node[int(t)]
                except (ValueError, IndexError):
                    raise _PatchError(f"doc is missing path: {'/' + '/'.join(tokens)}") from None
            else:
                raise _PatchError(f"doc is missing path: {'/' + '/'.join(tokens)}")
        return node, tokens[-1]

    def get(tokens: list[str]) -> Any:
        node = doc
        for t in tokens:
            if isinstance(node, dict) and t in node:
                node = node[t]
            elif isinstance(node, list) and t.isdigit() and int(t) < len(node):
                node = node[int(t)]
            else:
                raise _PatchError(f"doc is missing path: {'/' + '/'.join(tokens)}")
        return node

    def remove(tokens: list[str]) -> Any:
        parent, key = parent_of(tokens)
        if isinstance(parent, dict):
            if key not in parent:
                raise _PatchError(f"Unable to remove nonexistent key: {key}: missing value")
            return parent.pop(key)
        if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
            return parent.pop(int(key))
        raise _PatchError(f"Unable to remove nonexistent key: {key}: missing value")

    def add(tokens: list[str], value: Any) -> None:
        nonlocal doc
        if not tokens:
            doc = _copy(value)
            return
        parent, key = parent_of(tokens)
        if isinstance(parent, dict):
            parent[key] = _copy(value)
        elif isinstance(parent, list):
            if key == "-":
                parent.append(_copy(value))
            elif key.isdigit() and int(key) <= len(parent):
                parent.insert(int(key), _copy(value))
            else:
                raise _PatchError(f"add operation does not apply: index out of range: {key}")
        else:
            raise _PatchError(f"doc is missing path: {'/' + '/'.join(tokens)}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _PatchError("invalid JSON patch operation")
        kind, tokens = op["op"], _pointer(op["path"])
        if kind == "add":
            add(tokens, op.get("value"))
        elif kind == "remove":
            remove(tokens)
        elif kind == "replace":
            remove(tokens)
            add(tokens, op.get("value"))
        elif kind == "move":
            value = remove(_pointer(op["from"]))
            add(tokens, value)
        elif kind == "copy":
            add(tokens, get(_pointer(op["from"])))
        elif kind == "test":
            if not _deep_equal(get(tokens), op.get("value")):
                raise _PatchError(f"testing value {op['path']} failed: test failed")
        else:
            raise _PatchError(f"Unexpected kind: {kind}")
    return doc


# ------------------------------------------------------------------------------------------------
# Selectors


class _Selector:
    """A parsed label selector: a list of (key, op, values)."""

    _TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|notin\b|in\b|[^\s!=,()<>]+|<|>)\s*")

    def __init__(self, text: str | None) -> None:
        self.reqs: list[tuple[str, str, tuple[str, ...]]] = []
        if text:
            for part in self._split(text):
                self.reqs.append(self._parse(part.strip()))

    @staticmethod
    def _split(text: str) -> list[str]:
        parts, depth, cur = [], 0, ""
        for ch in text:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        return [p for p in parts if p.strip()]

    @staticmethod
    def _parse(part: str) -> tuple[str, str, tuple[str, ...]]:
        m = re.fullmatch(r"!\s*([^\s!=<>(),]+)", part)
        if m:
            return (m.group(1), "!", ())
        m = re.fullmatch(r"([^\s!=<>(),]+)\s+(in|notin)\s*\(([^()]*)\)", part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise _bad_request("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty")
            return (m.group(1), m.group(2), values)
        m = re.fullmatch(r"([^\s!=<>(),]+)\s*(==|=|!=)\s*([^\s!=<>(),]*)", part)
        if m:
            op = "=" if m.group(2) in ("=", "==") else "!="
            return (m.group(1), op, (m.group(3),))
        m = re.fullmatch(r"([^\s!=<>(),]+)\s*(<|>)\s*(-?\d+)", part)
        if m:
            return (m.group(1), m.group(2), (m.group(3),))
        m = re.fullmatch(r"([^\s!=<>(),]+)", part)
        if m:
            return (m.group(1), "exists", ())
        raise _bad_request(f"unable to parse requirement: found '{part}', expected: valid label selector")

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for key, op, values in self.reqs:
            present = key in labels
            value = labels.get(key)
            if op == "=" and not (present and value == values[0]):
                return False
            if op == "!=" and present and value == values[0]:
                return False
            if op == "exists" and not present:
                return False
            if op == "!" and present:
                return False
            if op == "in" and not (present and value in values):
                return False
            if op == "notin" and present and value in values:
                return False
            if op in ("<", ">"):
                try:
                    n = int(value) if present else None
                except ValueError:
                    n = None
                if n is None or (op == "<" and not n < int(values[0])) or (op == ">" and not n > int(values[0])):
                    return False
        return True


def _event_fields(obj: Obj) -> dict[str, str]:
    """The fields a core v1 Event can be selected by (pkg/registry/core/event/strategy.go, ToSelectableFields)."""
    ref = obj.get("involvedObject") or {}
    source = obj.get("source") or {}
    fields = {f"involvedObject.{k}": str(ref.get(k) or "") for k in
              ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")}
    fields.update({"reason": obj.get("reason") or "", "type": obj.get("type") or "",
                   "reportingComponent": obj.get("reportingComponent") or "",
                   "source": source.get("component") or obj.get("reportingComponent") or ""})
    return fields


def _pod_fields(obj: Obj) -> dict[str, str]:
    """The fields a Pod can be selected by (pkg/apis/core/v1/conversion.go, the Pod field label
    conversion; pkg/registry/core/pod/strategy.go, ToSelectableFields)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {"spec.nodeName": spec.get("nodeName") or "", "spec.restartPolicy": spec.get("restartPolicy") or "",
            "spec.schedulerName": spec.get("schedulerName") or "",
            "spec.serviceAccountName": spec.get("serviceAccountName") or "",
            "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
            "status.phase": status.get("phase") or "", "status.podIP": status.get("podIP") or "",
            "status.nominatedNodeName": status.get("nominatedNodeName") or ""}


def _node_fields(obj: Obj) -> dict[str, str]:
    """The fields a Node can be selected by (pkg/registry/core/node/strategy.go, NodeToSelectableFields)."""
    return {"spec.unschedulable": "true" if (obj.get("spec") or {}).get("unschedulable") else "false"}


# Built-in kinds with their own field label conversion answer "field label not supported" for others.
_TYPE_FIELDS = {CORE_EVENTS.key: _event_fields, PODS.key: _pod_fields, NODES.key: _node_fields}


class _FieldSelector:
    def __init__(self, text: str | None, rt: _ResourceType) -> None:
        self.reqs: list[tuple[str, str, str]] = []
        self._fields = _TYPE_FIELDS.get(rt.key)
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", part)
            if not m:
                raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key = m.group(1).strip()
            if key == "spec.host" and rt is PODS:  # old v1 clients' spelling, converted by the server
                key = "spec.nodeName"
            allowed = {"metadata.name", "metadata.namespace"} if rt.namespaced else {"metadata.name"}
            if self._fields is not None:
                allowed |= set(self._fields({}))
                if key not in allowed:
                    raise _bad_request(f"field label not supported: {key}")
            elif key not in allowed:
                raise _bad_request(f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"')
            self.reqs.append((key, "!=" if m.group(2) == "!=" else "=", m.group(3).strip()))

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        fields = self._fields(obj) if self._fields is not None else {}
        for key, op, value in self.reqs:
            actual = fields[key] if key in fields else meta.get(key.split(".", 1)[1], "")
            if (actual == value) != (op == "="):
                return False
        return True


# ------------------------------------------------------------------------------------------------
# Field ownership (a simple model of server-side apply)

_SYSTEM_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName"}

FieldPath = tuple  # of str (map key) or ("v", value) (set element)


def _leaves(obj: Obj, rt: _ResourceType, subresource: str | None) -> dict[FieldPath, Any]:
    """Leaf fields of an object that a manager can own, for the main resource or `/status`."""
    out: dict[FieldPath, Any] = {}

    def walk(prefix: FieldPath, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(prefix + (k,), v)
        else:
            out[prefix] = value

    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if rt.status_subresource and (key == "status") != (subresource == "status"):
            continue
        if key == "metadata":
            if not isinstance(value, dict):
                continue
            for mk, mv in value.items():
                if mk in _SYSTEM_META:
                    continue
                if mk == "finalizers" and isinstance(mv, list):
                    for f in mv:
                        out[("metadata", "finalizers", ("v", f))] = f
                    continue
                walk(("metadata", mk), mv)
        else:
            walk((key,), value)
    return out


def _path_text(path: FieldPath) -> str:
    text = ""
    for p in path:
        text += f'[={json.dumps(p[1])}]' if isinstance(p, tuple) else f".{p}"
    return text


def _delete_path(obj: Obj, path: FieldPath) -> None:
    node: Any = obj
    parents: list[tuple[dict, str]] = []
    for p in path[:-1]:
        if not isinstance(node, dict) or p not in node:
            return
        parents.append((node, p))
        node = node[p]
    last = path[-1]
    if isinstance(last, tuple):
        if isinstance(node, list) and last[1] in node:
            node.remove(last[1])
    elif isinstance(node, dict):
        node.pop(last, None)
    # prune maps (and the finalizer list) left empty below the top level
    for parent, key in reversed(parents[1:]):
        if parent.get(key) in ({}, []):
            del parent[key]


def _fields_v1(paths: set[FieldPath]) -> dict:
    tree: dict = {}
    for path in sorted(paths, key=lambda p: json.dumps(p, default=str)):
        node = tree
        for p in path:
            key = f"v:{json.dumps(p[1])}" if isinstance(p, tuple) else f"f:{p}"
            node = node.setdefault(key, {})
    return tree


@dataclass
class _Manager:
    manager: str
    operation: str  # Apply | Update
    subresource: str | None
    api_version: str
    time: str
    paths: set = field(default_factory=set)

    def render(self) -> Obj:
        entry: Obj = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                      "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(self.paths)}
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


# ------------------------------------------------------------------------------------------------
# Watchers and the store

_STOP = object()


@dataclass
class _Bookmark:
    resource_version: str


class _Watcher:
    def __init__(self, rt: _ResourceType, namespace: str | None, labels: _Selector,
                 fields: _FieldSelector, bookmarks: bool) -> None:
        self.rt, self.namespace, self.labels, self.fields = rt, namespace, labels, fields
        self.bookmarks = bookmarks
        self.queue: queue.Queue = queue.Queue()

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def translate(self, kind: str, new: Obj, old: Obj | None) -> tuple[str, Obj] | None:
        if kind == "MODIFIED":
            was, now = self.matches(old or {}), self.matches(new)
            if was and now:
                return ("MODIFIED", new)
            if now:
                return ("ADDED", new)
            if was:
                return ("DELETED", new)
            return None
        return (kind, new) if self.matches(new) else None


@dataclass
class _HistoryEntry:
    rv: int
    kind: str
    obj: Obj
    old: Obj | None


_DESCENDING_BASE = 10**12  # descending_versions: revision n is spelled str(_DESCENDING_BASE - n)


class _Store:
    def __init__(self, history: int, schema: dict | None, descending_versions: bool = False) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.descending_versions = descending_versions
        self.history_size = history
        self.schema = schema
        self._validator: Any = None
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {t.key: {} for t in _TYPES}
        self.history: dict[str, deque[_HistoryEntry]] = {t.key: deque() for t in _TYPES}
        self.compacted: dict[str, int] = {t.key: 0 for t in _TYPES}
        self.watchers: list[_Watcher] = []
        self.managers: dict[str, list[_Manager]] = {}  # uid -> managers
        self.created_seq: dict[str, int] = {}
        self._seq = 0

    # -- resourceVersions --------------------------------------------------------------------------

    def rv_text(self, revision: int) -> str:
        """How revision `revision` is spelled to clients: etcd's number, or (descending_versions) a
        number that shrinks as revisions grow. The API makes them opaque strings; clients may only
        compare them for equality, and that is what the second spelling checks."""
        return str(_DESCENDING_BASE - revision if self.descending_versions else revision)

    def rv_number(self, text: str) -> int:
        """The revision a client's resourceVersion names; ValueError when it names none."""
        number = int(text)
        if number < 0:
            raise ValueError(text)
        return _DESCENDING_BASE - number if self.descending_versions else number

    # -- commit and notification -----------------------------------------------------------------

    def _commit(self, rt: _ResourceType, kind: str, new: Obj, old: Obj | None) -> Obj:
        """Store `new` (or remove it for DELETED) at a fresh resourceVersion and notify watchers.

        What is stored is never changed in place afterwards (every write starts from a copy), so the
        history, the watchers' events and the answer all share the one stored object."""
        self.rv += 1
        uid = (new.get("metadata") or {}).get("uid")
        new = _copy_object(new) if uid in self.managers else _copy(new)
        meta = new["metadata"]
        meta["resourceVersion"] = self.rv_text(self.rv)
        if meta.get("uid") in self.managers:
            entries = [m.render() for m in self.managers[meta["uid"]] if m.paths]
            if entries:
                meta["managedFields"] = entries
            else:
                meta.pop("managedFields", None)
        key = (meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self.objects[rt.key].pop(key, None)
            self.managers.pop(meta.get("uid"), None)
        else:
            self.objects[rt.key][key] = new
            if kind == "ADDED":
                self._seq += 1
                self.created_seq[meta["uid"]] = self._seq
        hist = self.history[rt.key]
        hist.append(_HistoryEntry(self.rv, kind, new, old))
        while len(hist) > self.history_size:
            self.compacted[rt.key] = hist.popleft().rv
        for w in self.watchers:
            if w.rt is rt:
                ev = w.translate(kind, new, old)
                if ev:
                    w.queue.put({"type": ev[0], "object": ev[1]})
        if kind == "DELETED" and rt.namespaced:
            self._maybe_finish_namespace(meta.get("namespace", ""))
        return new

    def _maybe_finish_namespace(self, ns: str) -> None:
        nsobj = self.objects[NAMESPACES.key].get(("", ns))
        if not nsobj or not nsobj["metadata"].get("deletionTimestamp"):
            return
        if any(k[0] == ns for t in _TYPES if t.namespaced for k in self.objects[t.key]):
            return
        self._commit(NAMESPACES, "DELETED", nsobj, nsobj)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, rt: _ResourceType, ns: str | None, name: str) -> Obj:
        with self.lock:
            obj = self.objects[rt.key].get((ns or "", name))
            if obj is None:
                raise _not_found(rt, name)
            return _copy(obj)

    def list(self, rt: _ResourceType, ns: str | None, labels: _Selector, fields: _FieldSelector,
             limit: int | None, cont: str | None) -> Obj:
        with self.lock:
            keys = sorted(k for k in self.objects[rt.key] if ns is None or k[0] == ns)
            start_after = None
            if cont:
                try:
                    token = json.loads(base64.b64decode(cont))
                    start_after = tuple(token["start"])
                except Exception:
                    raise _bad_request(f"continue key is not valid: {cont}") from None
            items = []
            for k in keys:
                if start_after is not None and k <= start_after:
                    continue
                obj = self.objects[rt.key][k]
                if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj):
                    items.append(_copy(obj))
            meta: Obj = {"resourceVersion": self.rv_text(self.rv)}
            if limit and limit > 0 and len(items) > limit:
                last = items[limit - 1]["metadata"]
                meta["continue"] = base64.b64encode(json.dumps(
                    {"rv": self.rv, "start": [last.get("namespace", ""), last["name"]]}).encode()).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            return {"apiVersion": rt.api_version, "kind": rt.list_kind, "metadata": meta, "items": items}

    # -- validation ------------------------------------------------------------------------------

    def _validate(self, rt: _ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[_Cause] = []
        pattern, msg = (_DNS1123_LABEL, _LABEL_MSG) if rt is NAMESPACES else (_DNS1123_SUBDOMAIN, _SUBDOMAIN_MSG)
        limit = 63 if rt is NAMESPACES else 253
        if old is None and (not pattern.match(name) or len(name) > limit):
            causes.append(_Cause("metadata.name", "Invalid", msg if len(name) <= limit
                                 else f"must be no more than {limit} characters", name))
        for key, value in (meta.get("labels") or {}).items():
            err = _qualified_name_error(key)
            if err:
                causes.append(_Cause("metadata.labels", "Invalid", err, key))
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(_Cause("metadata.labels", "Invalid",
                                     "a valid label must be an empty string or consist of alphanumeric characters, "
                                     "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                                     "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                                     "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')", value))
        for key, value in (meta.get("annotations") or {}).items():
            err = _qualified_name_error(key)
            if err:
                causes.append(_Cause("metadata.annotations", "Invalid", err, key))
            if not isinstance(value, str):
                causes.append(_Cause("metadata.annotations", "Invalid", "must be a string", value))
        for i, fin in enumerate(meta.get("finalizers") or []):
            err = _qualified_name_error(fin) if isinstance(fin, str) else "must be a string"
            if err:
                causes.append(_Cause(f"metadata.finalizers[{i}]", "Invalid", err, fin))
        if old is not None and old["metadata"].get("deletionTimestamp"):
            new_fins = [f for f in meta.get("finalizers") or [] if f not in (old["metadata"].get("finalizers") or [])]
            if new_fins:
                causes.append(_Cause("metadata.finalizers", "Forbidden",
                                     "no new finalizers can be added if the object is being deleted, found new "
                                     "finalizers []string{" + ", ".join(json.dumps(f) for f in new_fins) + "}"))
        if rt in (CORE_EVENTS, EVENTS_V1):
            causes += self._event_causes(rt, obj)
        if rt is OLLAMAMODELS and self.schema is not None:
            causes += self._schema_causes(obj)
        if rt is CONFIGMAPS:
            causes += self._config_map_causes(obj, old)
        if rt is ENDPOINTSLICES:
            causes += self._endpoint_slice_causes(obj, old)
        if causes:
            raise _invalid(rt, name, causes)

    @staticmethod
    def _event_causes(rt: _ResourceType, obj: Obj) -> list[_Cause]:
        causes: list[_Cause] = []
        ns = obj["metadata"].get("namespace", "")
        ref_field = "involvedObject" if rt is CORE_EVENTS else "regarding"
        ref = obj.get(ref_field) or {}
        ref_ns = ref.get("namespace", "")
        if not ref_ns:
            if ns not in ("", "default"):
                causes.append(_Cause(f"{ref_field}.namespace", "Invalid", "does not match event.namespace", ref_ns))
        elif ref_ns != ns:
            causes.append(_Cause(f"{ref_field}.namespace", "Invalid", "does not match event.namespace", ref_ns))
        if rt is EVENTS_V1:
            for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
                if not obj.get(f):
                    causes.append(_Cause(f, "Required", ""))
            if obj.get("type") not in ("Normal", "Warning"):
                causes.append(_Cause("type", "NotSupported", 'supported values: "Normal", "Warning"', obj.get("type")))
            if len(obj.get("note") or "") > 1024:
                causes.append(_Cause("note", "Invalid", "can have at most 1024 characters", "..."))
        elif obj.get("type") and obj["type"] not in ("Normal", "Warning"):
            causes.append(_Cause("type", "NotSupported", 'supported values: "Normal", "Warning"', obj["type"]))
        return causes

    @staticmethod
    def _config_map_causes(obj: Obj, old: Obj | None) -> list[_Cause]:
        """ValidateConfigMap and ValidateConfigMapUpdate of kube-apiserver (values were decoded already)."""
        causes: list[_Cause] = []
        data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
        size = 0
        for field_name, entries in (("data", data), ("binaryData", binary)):
            for key, value in entries.items():
                path = f"{field_name}[{key}]"
                if len(key) > 253:
                    causes.append(_Cause(path, "Invalid", "must be no more than 253 characters", key))
                elif not _CONFIG_KEY.match(key):
                    causes.append(_Cause(path, "Invalid", _CONFIG_KEY_MSG, key))
                elif key in (".", ".."):
                    causes.append(_Cause(path, "Invalid", f"must not be '{key}'", key))
                elif key.startswith(".."):
                    causes.append(_Cause(path, "Invalid", "must not start with '..'", key))
                if field_name == "data" and key in binary:
                    causes.append(_Cause(path, "Invalid", "duplicate of key present in binaryData", key))
                size += len(key) + len(value.encode() if field_name == "data" else base64.b64decode(value))
        if size > _CONFIG_MAP_MAX_BYTES:
            causes.append(_Cause("[]", "TooLong", f"must have at most {_CONFIG_MAP_MAX_BYTES} bytes"))
        if old is not None and old.get("immutable"):
            if not obj.get("immutable"):
                causes.append(_Cause("immutable", "Forbidden", "field is immutable when `immutable` is set"))
            if (old.get("data") or {}) != data or (old.get("binaryData") or {}) != binary:
                causes.append(_Cause("data", "Forbidden", "field is immutable when `immutable` is set"))
        return causes

    @staticmethod
    def _endpoint_slice_causes(obj: Obj, old: Obj | None) -> list[_Cause]:
        """The parts of ValidateEndpointSlice (pkg/apis/discovery/validation) a reader depends on: an
        addressType of IPv4, IPv6 or FQDN (immutable), 1 to 100 addresses per endpoint, at most 100
        ports, each port's protocol TCP, UDP or SCTP."""
        causes: list[_Cause] = []
        kind = obj.get("addressType")
        if not kind:
            causes.append(_Cause("addressType", "Required", ""))
        elif kind not in ("IPv4", "IPv6", "FQDN"):
            causes.append(_Cause("addressType", "NotSupported", 'supported values: "FQDN", "IPv4", "IPv6"', kind))
        elif old is not None and old.get("addressType") != kind:
            causes.append(_Cause("addressType", "Invalid", "field is immutable", kind))
        for i, endpoint in enumerate(obj.get("endpoints") or []):
            addresses = (endpoint or {}).get("addresses") or []
            if not addresses:
                causes.append(_Cause(f"endpoints[{i}].addresses", "Required", "must contain at least 1 address"))
            elif len(addresses) > 100:
                causes.append(_Cause(f"endpoints[{i}].addresses", "TooLong", "must have at most 100 items"))
        ports = obj.get("ports") or []
        if len(ports) > 100:
            causes.append(_Cause("ports", "TooLong", "must have at most 100 items"))
        for i, port in enumerate(ports):
            protocol = (port or {}).get("protocol", "TCP")
            if protocol not in ("TCP", "UDP", "SCTP"):
                causes.append(_Cause(f"ports[{i}].protocol", "NotSupported",
                                     'supported values: "SCTP", "TCP", "UDP"', protocol))
        return causes

    def _schema_causes(self, obj: Obj) -> list[_Cause]:
        import jsonschema  # a product dependency

        if self._validator is None:  # built once: the schema does not change while the store lives
            self._validator = jsonschema.Draft7Validator(
                _to_json_schema(self.schema), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        validator = self._validator
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        causes = []
        for err in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path)
            if err.validator == "required":
                missing = re.findall(r"'([^']+)' is a required property", err.message)
                causes.append(_Cause(".".join(filter(None, [path] + missing[:1])), "Required", ""))
            elif err.validator == "enum":
                causes.append(_Cause(path, "NotSupported", "supported values: " +
                                     ", ".join(json.dumps(v) for v in err.validator_value), err.instance))
            else:
                causes.append(_Cause(path, "Invalid", err.message, err.instance))
        return causes

    # -- writes ----------------------------------------------------------------------------------

    def _check_namespace_for_create(self, rt: _ResourceType, ns: str | None, name: str) -> None:
        if not rt.namespaced:
            return
        nsobj = self.objects[NAMESPACES.key].get(("", ns or ""))
        if nsobj is None:
            raise _namespace_not_found(ns or "")
        if nsobj["metadata"].get("deletionTimestamp"):
            raise _ApiError(403, "Forbidden", f'{rt.qualified_resource} "{name}" is forbidden: unable to create new '
                            f"content in namespace {ns} because it is being terminated",
                            rt.details(name, causes=[{"reason": "NamespaceTerminating", "message":
                                                      f"namespace {ns} is being terminated",
                                                      "field": "metadata.namespace"}]))

    @staticmethod
    def _check_identity(rt: _ResourceType, body: Obj, ns: str | None, name: str | None) -> None:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rt.api_version:
            raise _bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                               f"version ({rt.api_version})")
        if kind and kind != rt.kind:
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        meta = meta or {}
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if name is not None and meta.get("name") and meta["name"] != name:
            raise _bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")

    def _prepare(self, rt: _ResourceType, obj: Obj) -> None:
        """Normalise an object the way the server re-serialises it."""
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj["metadata"]
        for k in ("labels", "annotations", "finalizers", "ownerReferences", "generateName"):
            if k in meta and not meta[k]:
                del meta[k]
        if rt is LEASES and isinstance(obj.get("spec"), dict):
            for k in ("acquireTime", "renewTime"):
                if obj["spec"].get(k):
                    obj["spec"][k] = _micro_time(obj["spec"][k], rt)
        if rt in (CORE_EVENTS, EVENTS_V1):
            for k in ("eventTime",):
                if obj.get(k):
                    obj[k] = _micro_time(obj[k], rt)
            series = obj.get("series")
            if isinstance(series, dict) and series.get("lastObservedTime"):
                series["lastObservedTime"] = _micro_time(series["lastObservedTime"], rt)
            for k in ("firstTimestamp", "lastTimestamp", "deprecatedFirstTimestamp", "deprecatedLastTimestamp"):
                if obj.get(k):
                    obj[k] = _time(obj[k])
        if rt is OLLAMAMODELS and self.schema is not None:
            _prune(obj, self.schema, top=True)
        if rt is CONFIGMAPS:
            _check_config_map_values(obj)
            for k in ("data", "binaryData"):  # Go's omitempty maps: an empty one is not stored
                if k in obj and not obj[k]:
                    del obj[k]

    def create(self, rt: _ResourceType, ns: str | None, body: Obj, manager: str, dry_run: bool) -> Obj:
        with self.lock:
            self._check_identity(rt, body, ns, None)
            obj = _copy(body)
            meta = obj.setdefault("metadata", {})
            if meta.get("resourceVersion"):
                raise _ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
            if not meta.get("name"):
                if meta.get("generateName"):
                    suffix = "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
                    meta["name"] = meta["generateName"] + suffix
                else:
                    raise _invalid(rt, "", [_Cause("metadata.name", "Required", "name or generateName is required")])
            name = meta["name"]
            if rt.namespaced:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            self._check_namespace_for_create(rt, ns, name)
            if (ns or "", name) in self.objects[rt.key]:
                raise _ApiError(409, "AlreadyExists", f'{rt.qualified_resource} "{name}" already exists',
                                rt.details(name))
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(k, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            if rt.custom:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            if rt.status_subresource:
                obj.pop("status", None)
            if rt is NAMESPACES:
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                obj["spec"] = {"finalizers": ["kubernetes"]}
                obj["status"] = {"phase": "Active"}
            self._prepare(rt, obj)
            self._validate(rt, obj, None)
            managers = [_Manager(manager, "Update", None, rt.api_version, _now(), set(_leaves(obj, rt, None)))]
            if dry_run:
                obj["metadata"]["managedFields"] = [m.render() for m in managers if m.paths]
                return obj
            self.managers[meta["uid"]] = managers
            return self._commit(rt, "ADDED", obj, None)

    def update(self, rt: _ResourceType, ns: str | None, name: str, body: Obj, subresource: str | None,
               manager: str, dry_run: bool) -> Obj:
        """PUT."""
        with self.lock:
            self._check_identity(rt, body, ns, name)
            old = self.objects[rt.key].get((ns or "", name))
            if old is None:
                raise _not_found(rt, name)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if not rv and rt.custom:
                raise _invalid(rt, name, [_Cause("metadata.resourceVersion", "Invalid", "must be specified for an "
                                                 "update", _GoHex0())])
            return self._update(rt, old, _copy(body), subresource, manager, "Update", dry_run)

    def _update(self, rt: _ResourceType, old: Obj, candidate: Obj, subresource: str | None, manager: str,
                operation: str, dry_run: bool, applied: tuple[set, bool] | None = None) -> Obj:
        """The shared part of PUT, PATCH and apply: `candidate` is the full desired object."""
        name = old["metadata"]["name"]
        cmeta = candidate.setdefault("metadata", {})
        if not isinstance(cmeta, dict):
            raise _bad_request("metadata must be an object")
        rv = cmeta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        uid = cmeta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise _conflict(rt, name, f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                            f"{old['metadata']['uid']}")
        if subresource == "status":
            new = _copy_object(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            meta = new["metadata"]
            meta.pop("managedFields", None)  # the server's own, rendered from its managers at commit
            for k in _SYSTEM_META - {"generateName", "managedFields"}:
                if k in old["metadata"]:
                    meta[k] = _copy(old["metadata"][k])
                else:
                    meta.pop(k, None)
            if rt.status_subresource:
                if "status" in old:
                    new["status"] = _copy(old["status"])
                else:
                    new.pop("status", None)
            if rt is NAMESPACES:
                new["status"] = _copy(old.get("status", {}))
                new.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        self._prepare(rt, new)
        self._validate(rt, new, old)
        if rt.custom and subresource != "status":
            def content(o: Obj) -> Obj:
                return {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            if not _deep_equal(content(new), content(old)):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        managers = self._owners_after(rt, old, new, subresource, manager, operation, applied)
        # a no-op write (ignoring managedFields timestamps) stores nothing
        def comparable(o: Obj, ms: list[_Manager]) -> str:
            o = {**o, "metadata": {k: v for k, v in o["metadata"].items()
                                   if k not in ("managedFields", "resourceVersion")}}
            return json.dumps([o, [(m.manager, m.operation, m.subresource, sorted(map(str, m.paths)))
                                   for m in ms if m.paths]], sort_keys=True, default=str)
        old_managers = self.managers.get(old["metadata"]["uid"], [])
        if comparable(new, managers) == comparable(old, old_managers):
            return old
        deleting = bool(new["metadata"].get("deletionTimestamp"))
        if dry_run:
            new["metadata"]["managedFields"] = [m.render() for m in managers if m.paths]
            return new
        self.managers[old["metadata"]["uid"]] = managers
        if deleting and not new["metadata"].get("finalizers"):
            return self._commit(rt, "DELETED", new, old)
        return self._commit(rt, "MODIFIED", new, old)

    def _owners_after(self, rt: _ResourceType, old: Obj, new: Obj, subresource: str | None, manager: str,
                      operation: str, applied: tuple[set, bool] | None) -> list[_Manager]:
        managers = [replace(m, paths=set(m.paths)) for m in self.managers.get(old["metadata"]["uid"], [])]
        old_leaves, new_leaves = _leaves(old, rt, subresource), _leaves(new, rt, subresource)
        me = next((m for m in managers if (m.manager, m.operation, m.subresource) ==
                   (manager, operation, subresource)), None)
        if me is None:
            me = _Manager(manager, operation, subresource, rt.api_version, _now())
            managers.append(me)
        if applied is not None:
            paths, taken = applied
            if me.paths != set(paths):
                me.time = _now()
            me.paths = set(paths)
            for m in managers:
                if m is not me and m.subresource == subresource:
                    m.paths -= taken
        else:
            changed = {p for p, v in new_leaves.items() if p not in old_leaves or not _deep_equal(old_leaves[p], v)}
            if changed:
                me.paths |= changed
                me.time = _now()
                for m in managers:
                    if m is not me and m.subresource == subresource:
                        m.paths -= changed
        for m in managers:
            if m.subresource == subresource:
                m.paths &= set(new_leaves)
        return [m for m in managers if m.paths]

    def patch(self, rt: _ResourceType, ns: str | None, name: str, content_type: str, raw: bytes,
              subresource: str | None, manager: str | None, force: bool, dry_run: bool) -> tuple[Obj, bool]:
        """PATCH; returns (object, created)."""
        ctype = content_type.split(";")[0].strip().lower()
        if ctype == "application/apply-patch+yaml":
            return self.apply(rt, ns, name, raw, subresource, manager, force, dry_run)
        if ctype == "application/strategic-merge-patch+json" and rt.custom:
            raise _ApiError(415, "UnsupportedMediaType",
                            "the body of the request was in an unknown format - accepted media types include: "
                            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
        if ctype not in ("application/merge-patch+json", "application/json-patch+json",
                         "application/strategic-merge-patch+json"):
            raise _ApiError(415, "UnsupportedMediaType",
                            f"the body of the request was in an unknown format - accepted media types include: "
                            f"application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
                            f"{'' if rt.custom else ', application/strategic-merge-patch+json'}")
        try:
            patch = json.loads(raw or b"null")
        except ValueError as e:
            raise _bad_request(f"error decoding patch: {e}") from None
        with self.lock:
            old = self.objects[rt.key].get((ns or "", name))
            if old is None:
                raise _not_found(rt, name)
            if ctype == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
                try:
                    candidate = _json_patch(old, patch)
                except _PatchError as e:
                    raise _ApiError(422, "Invalid", str(e)) from None
            else:
                if not isinstance(patch, dict):
                    raise _bad_request("the body of the request was in an unknown format")
                candidate = _merge_patch(old, patch)
            if not isinstance(candidate, dict):
                raise _ApiError(422, "Invalid", "the patch produced an object that is not a map")
            self._check_identity(rt, candidate, ns, name)
            cmeta = candidate.setdefault("metadata", {})
            if not cmeta.get("resourceVersion"):
                cmeta["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._update(rt, old, candidate, subresource, manager or "unknown", "Update", dry_run), False

    def apply(self, rt: _ResourceType, ns: str | None, name: str, raw: bytes, subresource: str | None,
              manager: str | None, force: bool, dry_run: bool) -> tuple[Obj, bool]:
        if not manager:
            raise _bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required "
                               "for apply patch")
        try:
            # Clients send apply bodies as JSON (a subset of YAML); json is 100 times faster to read.
            config = json.loads(raw or b"null")
        except ValueError:
            try:
                config = yaml.safe_load(raw or b"")
            except yaml.YAMLError as e:
                raise _bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(config, dict):
            raise _bad_request("error decoding YAML: the apply configuration is not an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise _bad_request("invalid object type: " + ("apiVersion" if not config.get("apiVersion") else "kind")
                               + " must be set")
        config = _drop_nulls(config)
        with self.lock:
            self._check_identity(rt, config, ns, name)
            cmeta = config.setdefault("metadata", {})
            cmeta["name"] = name
            old = self.objects[rt.key].get((ns or "", name))
            if old is None:
                if subresource == "status":
                    raise _not_found(rt, name)
                body = _copy(config)
                created = self.create(rt, ns, body, manager, dry_run=True)
                created["metadata"].pop("managedFields", None)
                paths = set(_leaves(config, rt, None))
                self._check_namespace_for_create(rt, ns, name)
                if dry_run:
                    return created, True
                self.managers[created["metadata"]["uid"]] = [
                    _Manager(manager, "Apply", None, rt.api_version, _now(), paths & set(_leaves(created, rt, None)))]
                return self._commit(rt, "ADDED", created, None), True
            applied = _leaves(config, rt, subresource)
            current = _leaves(old, rt, subresource)
            managers = self.managers.get(old["metadata"]["uid"], [])
            me = next((m for m in managers if (m.manager, m.operation, m.subresource) ==
                       (manager, "Apply", subresource)), None)
            conflicts: list[tuple[str, FieldPath]] = []
            taken: set = set()
            for p, v in applied.items():
                if p in current and not _deep_equal(current[p], v):
                    for m in managers:
                        if m is not me and m.subresource == subresource and p in m.paths:
                            conflicts.append((f'"{m.manager}"' if m.operation == "Apply" else
                                              f'"{m.manager}" using {m.api_version}', p))
                            taken.add(p)
            if conflicts and not force:
                fields = [_path_text(p) for _, p in conflicts]
                who = sorted({c[0] for c in conflicts})
                raise _ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict"
                                f"{'s' if len(conflicts) > 1 else ''}: conflict with {who[0]}: "
                                + ", ".join(fields),
                                rt.details(name, causes=[{"reason": "FieldManagerConflict",
                                                          "message": f"conflict with {c[0]}",
                                                          "field": _path_text(c[1])} for c in conflicts]))
            new = _copy_object(old)
            others = set().union(*[m.paths for m in managers if m is not me and m.subresource == subresource])
            for p in (me.paths if me else set()) - set(applied):
                if p not in others:
                    _delete_path(new, p)
            part = {k: v for k, v in config.items() if k not in ("apiVersion", "kind")}
            if rt.status_subresource:
                part = {"status": part["status"]} if subresource == "status" and "status" in part else \
                    {k: v for k, v in part.items() if k != "status"} if subresource != "status" else {}
            meta_part = {k: v for k, v in (part.pop("metadata", None) or {}).items()
                         if k in ("labels", "annotations", "finalizers", "ownerReferences", "resourceVersion")}
            _apply_merge(new, part)
            if subresource != "status":
                new_meta = new["metadata"]
                rv = meta_part.pop("resourceVersion", None)
                _apply_merge(new_meta, meta_part, finalizers=True)
                new_meta["resourceVersion"] = rv or old["metadata"]["resourceVersion"]
            else:
                candidate_rv = (config.get("metadata") or {}).get("resourceVersion")
                new["metadata"]["resourceVersion"] = candidate_rv or old["metadata"]["resourceVersion"]
            result = self._update(rt, old, new, subresource, manager, "Apply", dry_run,
                                  applied=(set(applied), taken if force else set()))
            return result, False

    def delete(self, rt: _ResourceType, ns: str | None, name: str, options: Obj, dry_run: bool) -> Obj:
        with self.lock:
            old = self.objects[rt.key].get((ns or "", name))
            if old is None:
                raise _not_found(rt, name)
            pre = (options or {}).get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise _conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                f"meta: {old['metadata']['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name, f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does "
                                f"not match the ResourceVersion in record ({old['metadata']['resourceVersion']}). "
                                "The object might have been modified")
            if rt is NAMESPACES:
                return self._delete_namespace(old, dry_run)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return _copy(old)
                new = _copy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if rt.custom:
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                if dry_run:
                    return new
                return self._commit(rt, "MODIFIED", new, old)
            if not dry_run:
                deleted = self._commit(rt, "DELETED", old, old)
                if rt is PODS:  # its registry sets ReturnDeletedObject (pkg/registry/core/pod/storage)
                    return _copy(deleted)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": rt.details(name, uid=old["metadata"]["uid"])}

    def _delete_namespace(self, old: Obj, dry_run: bool) -> Obj:
        name = old["metadata"]["name"]
        if old["metadata"].get("deletionTimestamp"):
            return _copy(old)
        new = _copy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new["status"] = {"phase": "Terminating"}
        if dry_run:
            return new
        result = self._commit(NAMESPACES, "MODIFIED", new, old)
        for t in _TYPES:
            if t.namespaced:
                for key in [k for k in self.objects[t.key] if k[0] == name]:
                    self.delete(t, name, key[1], {}, False)
        self._maybe_finish_namespace(name)
        stored = self.objects[NAMESPACES.key].get(("", name))
        return _copy(stored) if stored else result

    # -- watch -----------------------------------------------------------------------------------

    def start_watch(self, w: _Watcher, rv_text: str | None) -> tuple[list[Obj], Obj | None]:
        """Register a watcher; returns (initial events, ERROR Status or None)."""
        with self.lock:
            if rv_text in (None, "", "0"):
                initial = [{"type": "ADDED", "object": _copy(o)}
                           for k, o in sorted(self.objects[w.rt.key].items()) if w.matches(o)]
            else:
                try:
                    rv = self.rv_number(rv_text)
                except ValueError:
                    raise _bad_request(f'resourceVersion: Invalid value: "{rv_text}": strconv.ParseUint: parsing '
                                       f'"{rv_text}": invalid syntax') from None
                compacted = self.compacted[w.rt.key]
                if rv < compacted:
                    return [], _status_body(410, "Expired", f"too old resource version: {rv_text} "
                                                             f"({self.rv_text(compacted)})")
                initial = []
                for e in self.history[w.rt.key]:
                    if e.rv > rv:
                        ev = w.translate(e.kind, e.obj, e.old)
                        if ev:
                            initial.append({"type": ev[0], "object": _copy(ev[1])})
            self.watchers.append(w)
            return initial, None

    def end_watch(self, w: _Watcher) -> None:
        with self.lock:
            if w in self.watchers:
                self.watchers.remove(w)


class _GoHex0:
    """How Go prints the zero resourceVersion in the 'must be specified' message."""

    def __str__(self) -> str:
        return "0x0"


def _check_config_map_values(obj: Obj) -> None:
    """What decoding a ConfigMap refuses before validation: values that are not strings (400)."""
    for field_name in ("data", "binaryData"):
        entries = obj.get(field_name)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise _bad_request(f"json: cannot unmarshal {type(entries).__name__} into Go struct field "
                               f"ConfigMap.{field_name} of type map[string]")
        for key, value in entries.items():
            if not isinstance(value, str):
                raise _bad_request(f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                                   f"ConfigMap.{field_name} of type {'string' if field_name == 'data' else '[]uint8'}")
            if field_name == "binaryData":
                try:
                    base64.b64decode(value, validate=True)
                except ValueError:
                    raise _bad_request(f"illegal base64 data in ConfigMap.binaryData[{key}]") from None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _apply_merge(target: dict, config: dict, finalizers: bool = False) -> None:
    for k, v in config.items():
        if finalizers and k == "finalizers" and isinstance(v, list):
            existing = target.get(k) or []
            target[k] = existing + [f for f in v if f not in existing]
        elif isinstance(v, dict) and isinstance(target.get(k), dict) and v:
            _apply_merge(target[k], v)
        else:
            target[k] = _copy(v)


def _to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (CRD flavour) to JSON Schema draft 7: drop x-kubernetes-*, map nullable."""
    if isinstance(schema, list):
        return [_to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")
           and k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _prune(value: Any, schema: dict | None, top: bool = False) -> None:
    """Drop fields the structural schema does not know (what the real server does to CRs)."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        for k in list(value):
            if top and k in ("apiVersion", "kind", "metadata"):
                continue
            if props is not None and k in props:
                _prune(value[k], props[k])
            elif isinstance(addl, dict):
                _prune(value[k], addl)
            elif addl is not True:
                del value[k]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune(item, schema["items"])


# ------------------------------------------------------------------------------------------------
# HTTP layer


@dataclass(frozen=True)
class RequestRecord:
    """One request the stand-in received.

    `verb` is the Kubernetes audit verb the request maps to: ``get``, ``list``, ``watch``,
    ``create``, ``update``, ``patch``, ``delete``, ``deletecollection``, ``discovery`` or
    ``unknown``; `subresource` is ``"status"`` for the status subresource.
    """

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    verb: str = "unknown"
    subresource: str | None = None

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")


@dataclass
class _Fault:
    method: str | None
    pattern: re.Pattern
    remaining: int | None
    status: int = 0
    body: dict | None = None
    seconds: float = 0.0
    retry_after: int | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and bool(self.pattern.search(path))


@dataclass
class _Route:
    kind: str  # "resource" | "discovery"
    rt: _ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    body: Obj | None = None  # discovery document


def _discovery_resources(group: str, version: str) -> Obj | None:
    resources = []
    for t in _TYPES:
        if (t.group, t.version) != (group, version):
            continue
        r: Obj = {"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                  "verbs": _VERBS if t is not NAMESPACES else ["create", "delete", "get", "list", "patch",
                                                                 "update", "watch"]}
        if t.short_names:
            r["shortNames"] = list(t.short_names)
        resources.append(r)
        if t.status_subresource:
            resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                              "kind": t.kind, "verbs": ["get", "patch", "update"]})
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def _api_group(group: str) -> Obj | None:
    versions = sorted({t.version for t in _TYPES if t.group == group})
    if not group or not versions:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _route(path: str) -> _Route | None:
    segs = [s for s in path.split("/") if s]
    if segs == ["version"]:
        return _Route("discovery", body={"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin",
                                         "gitCommit": "0" * 40, "gitTreeState": "clean",
                                         "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                                         "compiler": "gc", "platform": "linux/amd64"})
    if not segs:
        return _Route("discovery", body={"paths": ["/api", "/api/v1", "/apis", "/version"] +
                                         sorted({f"/apis/{t.group}/{t.version}" for t in _TYPES if t.group})})
    if segs[0] == "api":
        if len(segs) == 1:
            return _Route("discovery", body={"kind": "APIVersions", "versions": ["v1"],
                                             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                             "serverAddress": "127.0.0.1:6443"}]})
        if segs[1] != "v1":
            return None
        group, version, rest = "", "v1", segs[2:]
    elif segs[0] == "apis":
        if len(segs) == 1:
            groups = [g for g in (_api_group(g) for g in dict.fromkeys(t.group for t in _TYPES if t.group)) if g]
            return _Route("discovery", body={"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if len(segs) == 2:
            g = _api_group(segs[1])
            return _Route("discovery", body=g) if g else None
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    if not rest:
        doc = _discovery_resources(group, version)
        return _Route("discovery", body=doc) if doc else None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in _BY_GVR:
        namespace, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and group:
        return None
    rt = _BY_GVR.get((group, version, rest[0]))
    if rt is None or len(rest) > 3:
        return None
    if rt.namespaced and namespace is None and len(rest) > 1:
        return None
    if not rt.namespaced and namespace is not None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and not (sub == "status" and (rt.status_subresource or rt is NAMESPACES)):
        return None
    return _Route("resource", rt, namespace, name, sub)


def _verb(method: str, route: _Route | None, query: dict[str, str]) -> str:
    if route is None:
        return "unknown"
    if route.kind == "discovery":
        return "discovery"
    watch = query.get("watch", "").lower() in ("true", "1")
    if route.name is None:
        return {"GET": "watch" if watch else "list", "POST": "create",
                "DELETE": "deletecollection"}.get(method, "unknown")
    return {"GET": "watch" if watch else "get", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}.get(method, "unknown")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: "KubeStandin"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default logging
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.standin._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.standin._track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- plumbing --------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self) -> None:
        standin = self.server.standin
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        content_type = self.headers.get("Content-Type")
        raw = self._read_body()
        route = _route(path)
        verb = _verb(self.command, route, query)
        standin._log(RequestRecord(self.command, path, query, content_type, verb,
                                   route.subresource if route else None))
        for fault in standin._take_faults(self.command, path):
            if fault.seconds:
                standin._stopping.wait(fault.seconds)
            else:
                body = fault.body if fault.body is not None else _status_body(
                    fault.status, _REASONS.get(fault.status, "Unknown"), f"injected fault: {fault.status}")
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                self._send_json(fault.status, body, headers)
                return
        try:
            if route is None:
                raise _ApiError(404, "NotFound", "the server could not find the requested resource",
                                {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})
            if route.kind == "discovery":
                if self.command != "GET":
                    raise _ApiError(405, "MethodNotAllowed", "the server does not allow this method on the "
                                    "requested resource")
                self._send_json(200, route.body or {})
                return
            self._resource(route, query, content_type or "", raw, verb)
        except _ApiError as e:
            self._send_json(e.code, e.status(), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the stand-in: answer like the real server would
            self._send_json(500, _status_body(500, "InternalError", f"stand-in error: {type(e).__name__}: {e}"))

    def _parse_body(self, raw: bytes, content_type: str) -> Any:
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in ("", "application/json", "application/yaml"):
            raise _ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                            "accepted media types include: application/json, application/yaml")
        if not raw:
            raise _bad_request("the body of the request was empty")
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise _bad_request(f"the body of the request was in an unknown format: {e}") from None

    def _resource(self, route: _Route, query: dict[str, str], content_type: str, raw: bytes, verb: str) -> None:
        standin = self.server.standin
        store = standin._store
        rt = route.rt
        assert rt is not None
        ns, name, sub = route.namespace, route.name, route.subresource
        dry_run = bool(query.get("dryRun"))
        manager = query.get("fieldManager") or (self.headers.get("User-Agent") or "unknown").split("/")[0]
        if verb == "watch":
            field_sel = query.get("fieldSelector")
            if name is not None:
                field_sel = ",".join(filter(None, [field_sel, f"metadata.name={name}"]))
            self._watch(rt, ns, query, field_sel)
        elif verb == "list":
            limit = query.get("limit")
            self._send_json(200, store.list(rt, ns, _Selector(query.get("labelSelector")),
                                            _FieldSelector(query.get("fieldSelector"), rt),
                                            int(limit) if limit and limit.isdigit() else None, query.get("continue")))
        elif verb == "get":
            self._send_json(200, store.get(rt, ns, name or ""))
        elif verb == "create":
            if rt.namespaced and ns is None:
                raise _ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                "resource")
            self._send_json(201, store.create(rt, ns, self._parse_body(raw, content_type), manager, dry_run))
        elif verb == "update":
            self._send_json(200, store.update(rt, ns, name or "", self._parse_body(raw, content_type), sub,
                                              manager, dry_run))
        elif verb == "patch":
            if "apply-patch" in content_type and not query.get("fieldManager"):
                raise _bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is "
                                   "required for apply patch")
            obj, created = store.patch(rt, ns, name or "", content_type, raw, sub, manager,
                                       query.get("force", "").lower() in ("true", "1"), dry_run)
            self._send_json(201 if created else 200, obj)
        elif verb == "delete":
            options = json.loads(raw) if raw.strip() else {}
            self._send_json(200, store.delete(rt, ns, name or "", options if isinstance(options, dict) else {},
                                              dry_run))
        elif verb == "deletecollection":
            with store.lock:
                listed = store.list(rt, ns, _Selector(query.get("labelSelector")),
                                    _FieldSelector(query.get("fieldSelector"), rt), None, None)
                for item in listed["items"]:
                    try:
                        store.delete(rt, item["metadata"].get("namespace"), item["metadata"]["name"], {}, dry_run)
                    except _ApiError:
                        pass
            self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        else:
            raise _ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # -- watch -----------------------------------------------------------------------------------

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def _watch(self, rt: _ResourceType, ns: str | None, query: dict[str, str], field_sel: str | None) -> None:
        standin = self.server.standin
        store = standin._store
        watcher = _Watcher(rt, ns, _Selector(query.get("labelSelector")), _FieldSelector(field_sel, rt),
                           query.get("allowWatchBookmarks", "").lower() in ("true", "1"))
        timeout = query.get("timeoutSeconds")
        deadline = time.monotonic() + int(timeout) if timeout and timeout.isdigit() else None
        initial, error = store.start_watch(watcher, query.get("resourceVersion"))
        standin._watch_started()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            if error is not None:
                self._chunk({"type": "ERROR", "object": error})
            else:
                for event in initial:
                    self._chunk(event)
                self._watch_loop(watcher, deadline)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            store.end_watch(watcher)
            standin._watch_ended()

    def _watch_loop(self, watcher: _Watcher, deadline: float | None) -> None:
        standin = self.server.standin
        store = standin._store
        interval = standin.bookmark_interval
        next_bookmark = time.monotonic() + interval
        while not standin._stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = 0.2
            if deadline is not None:
                wait = min(wait, deadline - now)
            if watcher.bookmarks and interval > 0:
                wait = min(wait, max(next_bookmark - now, 0))
            try:
                item = watcher.queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if watcher.bookmarks and interval > 0 and time.monotonic() >= next_bookmark:
                    with store.lock:  # only when nothing is queued, so the bookmark never overtakes an event
                        rv = store.rv_text(store.rv) if watcher.queue.empty() else None
                    if rv is not None:
                        self._chunk(self._bookmark(watcher.rt, rv))
                        next_bookmark = time.monotonic() + interval
                if self._client_gone():
                    return
                continue
            if item is _STOP:
                return
            if isinstance(item, _Bookmark):
                if watcher.bookmarks:
                    self._chunk(self._bookmark(watcher.rt, item.resource_version))
                continue
            self._chunk(item)

    @staticmethod
    def _bookmark(rt: _ResourceType, rv: str) -> Obj:
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version,
                                               "metadata": {"resourceVersion": rv}}}


# ------------------------------------------------------------------------------------------------
# Public interface


class KubeStandin:
    """A stand-in kube-apiserver on 127.0.0.1 serving OllamaModels, Leases, Events, Namespaces, ConfigMaps,
    Pods, Nodes and EndpointSlices.

    Use as a context manager (``with KubeStandin() as kube: ...``) or call `start` and `stop`.

    :param history: how many watch events are kept per resource type for watches from a
        ``resourceVersion``; older versions get a 410 Expired ERROR event.
    :param bookmark_interval: seconds between BOOKMARK events on watches that allow them
        (``0`` turns periodic bookmarks off; `send_bookmark` still works).
    :param schema: optional ``openAPIV3Schema`` of the OllamaModel CRD; when given, OllamaModel
        writes are pruned of unknown fields and validated against it (422 Invalid), as the real
        server does. Without it, any content is kept.
    :param descending_versions: spell resourceVersions as numbers that shrink as revisions grow
        (still unique, still accepted back): a client that compares them as integers, which the
        API forbids (they are opaque; only equality and the order of one watch stream count), goes
        wrong at once instead of by luck.
    """

    def __init__(self, *, history: int = 1000, bookmark_interval: float = 1.0, schema: dict | None = None,
                 descending_versions: bool = False) -> None:
        self.bookmark_interval = bookmark_interval
        self._store = _Store(history, schema, descending_versions)
        self._log_lock = threading.Lock()
        self._log_entries: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._watch_count = 0
        self._watch_cond = threading.Condition()
        self.url = ""
        for ns in _INITIAL_NAMESPACES:
            self.add_namespace(ns)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "KubeStandin":
        """Start serving on a free port of 127.0.0.1; sets `url`. Returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every watch cleanly, stop serving and close all connections. Idempotent."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        with self._store.lock:
            for w in self._store.watchers:
                w.queue.put(_STOP)
        with self._watch_cond:
            self._watch_cond.wait_for(lambda: self._watch_count == 0, timeout=5)
        server.shutdown()
        server.server_close()
        with self._log_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "KubeStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_configuration(self) -> kubernetes.client.Configuration:
        """A new client Configuration pointing at this server (no authentication)."""
        if not self.url:
            raise RuntimeError("KubeStandin is not started")
        return kubernetes.client.Configuration(host=self.url)

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """Write a kubeconfig (context ``standin``, no credentials) pointing at this server; returns its path."""
        if not self.url:
            raise RuntimeError("KubeStandin is not started")
        target = Path(path)
        target.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                         "namespace": namespace}}],
        }))
        return target

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new ApiClient on `client_configuration` (close it, or use it as a context manager)."""
        return kubernetes.client.ApiClient(self.client_configuration())

    # -- state -----------------------------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        """Create namespace `name` (a no-op when it exists)."""
        with self._store.lock:
            if ("", name) not in self._store.objects[NAMESPACES.key]:
                self._store.create(NAMESPACES, None, {"metadata": {"name": name}}, "standin", False)

    def objects(self, namespace: str | None = None) -> list[dict]:
        """The stored OllamaModels (deep copies), sorted by namespace and name."""
        with self._store.lock:
            return [_copy(o) for k, o in sorted(self._store.objects[OLLAMAMODELS.key].items())
                    if namespace is None or k[0] == namespace]

    def leases(self, namespace: str | None = None) -> list[dict]:
        """The stored Leases (deep copies), sorted by namespace and name."""
        with self._store.lock:
            return [_copy(o) for k, o in sorted(self._store.objects[LEASES.key].items())
                    if namespace is None or k[0] == namespace]

    def config_maps(self, namespace: str | None = None) -> list[dict]:
        """The stored ConfigMaps (deep copies), sorted by namespace and name."""
        with self._store.lock:
            return [_copy(o) for k, o in sorted(self._store.objects[CONFIGMAPS.key].items())
                    if namespace is None or k[0] == namespace]

    def events(self) -> list[dict]:
        """The stored Events of both APIs (core v1 and events.k8s.io/v1), in creation order."""
        with self._store.lock:
            found = [o for t in (CORE_EVENTS, EVENTS_V1) for o in self._store.objects[t.key].values()]
            found.sort(key=lambda o: self._store.created_seq.get(o["metadata"]["uid"], 0))
            return _copy(found)

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._store.lock:
            return self._store.rv_text(self._store.rv)

    # -- watch control ---------------------------------------------------------------------------

    def expire_history(self) -> None:
        """Forget all watch history: a watch from any version older than the current one gets 410."""
        with self._store.lock:
            for key in self._store.history:
                self._store.history[key].clear()
                self._store.compacted[key] = self._store.rv

    def send_bookmark(self) -> None:
        """Send a BOOKMARK (at the current version) now on every open watch that allows bookmarks."""
        with self._store.lock:
            for w in self._store.watchers:
                w.queue.put(_Bookmark(self._store.rv_text(self._store.rv)))

    def watch_count(self) -> int:
        """How many watch streams are open now."""
        with self._watch_cond:
            return self._watch_count

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least `count` watch streams are open; False on timeout."""
        with self._watch_cond:
            return self._watch_cond.wait_for(lambda: self._watch_count >= count, timeout=timeout)

    # -- fault injection -------------------------------------------------------------------------

    def inject(self, method: str | None, path_regex: str, status: int, times: int | None = 1,
               body: dict | None = None, *, retry_after: int | None = None) -> None:
        """Answer the next `times` requests (None: all, until `clear_faults`) whose method is `method`
        (None: any) and whose path matches `path_regex` (``re.search``) with `status` and a ``Status``
        body (or `body` when given), with a ``Retry-After`` header when `retry_after` is given.

        Mind urllib3 under the client: a 413, 429 or 503 answer with ``Retry-After`` to a GET, PUT or
        DELETE is retried (up to 3 times, sleeping Retry-After seconds) before the client sees it; when
        the retries run out the last answer reaches the caller as an ``ApiException``."""
        with self._log_lock:
            self._faults.append(_Fault(method, re.compile(path_regex), times, status=status, body=body,
                                       retry_after=retry_after))

    def delay(self, path_regex: str, seconds: float, *, method: str | None = None, times: int | None = None) -> None:
        """Hold matching requests for `seconds` before answering them (None `times`: all of them)."""
        with self._log_lock:
            self._faults.append(_Fault(method, re.compile(path_regex), times, seconds=seconds))

    def clear_faults(self) -> None:
        """Remove every injected fault and delay."""
        with self._log_lock:
            self._faults.clear()

    # -- request log -----------------------------------------------------------------------------

    @property
    def request_log(self) -> list[RequestRecord]:
        """A snapshot of every request received so far, in order."""
        with self._log_lock:
            return list(self._log_entries)

    def clear_request_log(self) -> None:
        with self._log_lock:
            self._log_entries.clear()

    def requests(self, verb: str | None = None, *, method: str | None = None, path_regex: str | None = None,
                 writes: bool = False) -> list[RequestRecord]:
        """Requests filtered by verb (``list``, ``watch``, ``get``, ``create``, ...), HTTP method,
        path (``re.search``), and/or `writes` (create, update, patch, delete, deletecollection)."""
        pattern = re.compile(path_regex) if path_regex else None
        return [r for r in self.request_log
                if (verb is None or r.verb == verb) and (method is None or r.method == method.upper())
                and (pattern is None or pattern.search(r.path)) and (not writes or r.is_write)]

    def count(self, verb: str | None = None, *, method: str | None = None, path_regex: str | None = None,
              writes: bool = False) -> int:
        """How many requests `requests` would return."""
        return len(self.requests(verb, method=method, path_regex=path_regex, writes=writes))

    # -- internals used by the handler -----------------------------------------------------------

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log_entries.append(record)

    def _take_faults(self, method: str, path: str) -> list[_Fault]:
        """Matching delays (all) then at most one matching injected answer, consuming their counts."""
        taken: list[_Fault] = []
        with self._log_lock:
            answer_taken = False
            for f in list(self._faults):
                if not f.matches(method, path) or (not f.seconds and answer_taken):
                    continue
                taken.append(f)
                answer_taken = answer_taken or not f.seconds
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
        return sorted(taken, key=lambda f: not f.seconds)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._log_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _watch_started(self) -> None:
        with self._watch_cond:
            self._watch_count += 1
            self._watch_cond.notify_all()

    def _watch_ended(self) -> None:
        with self._watch_cond:
            self._watch_count -= 1
            self._watch_cond.notify_all()
