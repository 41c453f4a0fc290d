"""The Kubernetes edge: the few calls Kubernetes mode makes, through the official client.

Errors come out as `ClusterError` with the HTTP status and the API server's message, so the core
can tell a conflict (retry), a missing namespace (a per-model error) and an outage apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..models.desired import ModelKey
from .resources import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, Resource

APPLY = "application/apply-patch+yaml"
CONTROLLER_MANAGER = f"{FIELD_MANAGER}-controller"
JSON_PATCH = "application/json-patch+json"
REQUEST_TIMEOUT = 30  # seconds; an API server that hangs must not hang a cycle


class ClusterError(Exception):
    """A Kubernetes API call failed: `status` is the HTTP status (0 when there was no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


class WriteObserver(Protocol):
    """Told of the product's own writes to a resource and of their answers (`ResourceCache`)."""

    def own_write(self, key: ModelKey) -> Any: ...  # a context manager yielding a callback


class ClusterClient:
    """OllamaModel writes, status writes, finalizers and Events.

    :param observer: the resource cache, told of every write to an OllamaModel and of its answer,
        so that it holds what was written at once and does not take the write's watch event for
        someone else's change.
    """

    def __init__(self, api_client: client.ApiClient, observer: WriteObserver | None = None) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._observer = observer

    def apply(self, body: dict[str, Any]) -> None:
        """Create or update a resource by server-side apply, taking over fields from other managers."""
        meta = body["metadata"]
        key = ModelKey(meta["namespace"], meta["name"])
        self._write(key, lambda: self._apply(_resource_path(key.namespace, key.name), FIELD_MANAGER, body))

    def delete(self, key: ModelKey) -> bool:
        """Ask for deletion (finalizers then hold it until released); False when already gone."""
        try:
            self._write(key, lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, key.namespace, PLURAL, key.name, _request_timeout=REQUEST_TIMEOUT))
        except ClusterError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def remove_finalizer(self, key: ModelKey, finalizer: str, finalizers: list[str], attempts: int = 3) -> None:
        """Remove `finalizer` from the resource; `finalizers` is its list as last seen (the cache).

        The JSON patch tests the entry it removes, so another controller's finalizer is never
        removed by mistake; when the list has shifted since it was seen, the server refuses (422)
        and the resource is read again for a fresh patch. A resource that is gone, or no longer
        holds the finalizer, has nothing to release.
        """
        current = list(finalizers)
        for attempt in range(attempts):
            if finalizer not in current:
                return
            index = current.index(finalizer)
            patch = [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ]
            try:
                self._write(key, lambda: self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, key.namespace, PLURAL, key.name, patch, _content_type=JSON_PATCH,
                    _request_timeout=REQUEST_TIMEOUT))
                return
            except ClusterError as exc:
                if exc.not_found:
                    return
                if exc.status != 422 or attempt == attempts - 1:
                    raise
            try:
                obj = self._call(lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, key.namespace, PLURAL, key.name, _request_timeout=REQUEST_TIMEOUT))
            except ClusterError as exc:
                if exc.not_found:
                    return
                raise
            current = list((obj.get("metadata") or {}).get("finalizers") or [])

    def patch_annotations(self, key: ModelKey, annotations: dict[str, str | None]) -> None:
        """Merge annotations (None removes one) under the controller's own field manager, so that the
        sync's server-side apply, which does not list them, leaves them alone."""
        self._write(key, lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, key.namespace, PLURAL, key.name, {"metadata": {"annotations": annotations}},
            field_manager=CONTROLLER_MANAGER, _request_timeout=REQUEST_TIMEOUT))

    def apply_status(self, key: ModelKey, status: dict[str, Any]) -> None:
        """Server-side apply `status` to the status subresource (the only way status is written), under
        the controller's field manager: a field left out (None) is removed, as it was owned by it."""
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": key.name, "namespace": key.namespace},
                "status": {k: v for k, v in status.items() if v is not None}}
        self._write(key, lambda: self._apply(_resource_path(key.namespace, key.name) + "/status",
                                             CONTROLLER_MANAGER, body))

    def _write(self, key: ModelKey, operation: Callable[[], Any]) -> None:
        """One write to the resource `key`, its answer handed to the observer."""
        if self._observer is None:
            self._call(operation)
            return
        with self._observer.own_write(key) as noted:
            answer = self._call(operation)
            if isinstance(answer, Mapping):
                noted(answer)

    def _apply(self, path: str, manager: str, body: dict[str, Any]) -> dict[str, Any]:
        """One server-side apply, through the client's own ApiClient (configuration, credentials and
        their refresh, connection pool, error types) but with the body serialised here and the answer
        decoded as plain JSON: these are the two writes made per model, and at ten thousand models the
        generated method's argument validation, re-serialisation and model decoding were a third of
        the client's time. Returns the object written."""
        def send() -> dict[str, Any]:
            method, url, headers, data, _ = self.api_client.param_serialize(
                "PATCH", path, query_params=[("fieldManager", manager), ("force", True)],
                header_params={"Content-Type": APPLY, "Accept": "application/json"},
                body=json.dumps(body, separators=(",", ":")).encode(), auth_settings=["BearerToken"])
            response = self.api_client.call_api(method, url, header_params=headers, body=data,
                                                _request_timeout=REQUEST_TIMEOUT)
            text = response.read().decode("utf-8", "replace")
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=text, data=None)
            try:
                answer = json.loads(text)
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
        return self._call(send)

    def event(self, key: ModelKey, reason: str, message: str, warning: bool = False,
              resource: Resource | None = None) -> None:
        """Record a Kubernetes Event on the resource (best effort: an Event is never worth a failure).

        With `resource` (as the watch cache holds it), the Event names its uid and resourceVersion,
        as client-go's recorder does: `kubectl describe` selects a resource's Events by uid."""
        now = datetime.now(timezone.utc)
        involved = client.V1ObjectReference(api_version=API_VERSION, kind=KIND, name=key.name, namespace=key.namespace)
        if resource is not None:
            involved.uid = resource.uid or None
            involved.resource_version = resource.resource_version or None
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{key.name}.", namespace=key.namespace),
            involved_object=involved,
            reason=reason, message=message[:1024], type="Warning" if warning else "Normal",
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component=FIELD_MANAGER), reporting_component=FIELD_MANAGER,
        )
        try:
            self._call(lambda: self.core.create_namespaced_event(key.namespace, body, _request_timeout=REQUEST_TIMEOUT))
        except ClusterError:
            pass

    @staticmethod
    def _call(operation):  # type: ignore[no-untyped-def]
        try:
            return operation()
        except ApiException as exc:
            raise ClusterError(exc.status or 0, _message(exc)) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, reset, timed out
            raise ClusterError(0, f"the Kubernetes API is not reachable: {exc}") from None


def _resource_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}/{quote(name, safe='')}"


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except ValueError:
        return exc.reason or str(exc.status)
