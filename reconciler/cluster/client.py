"""The Kubernetes edge: the few calls Kubernetes mode makes, through the official client.

Errors come out as `ClusterError` with the HTTP status and the API server's message, so the core
can tell a conflict (retry), a missing namespace (a per-model error) and an outage apart.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..desired import ModelKey
from .resources import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, API_VERSION

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


class ClusterClient:
    """OllamaModel writes, status writes, finalizers and Events."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    # The answers to the two writes made per model are not read (the watch brings the objects), so
    # they are not decoded either: at ten thousand models, decoding was an eighth of the client's time.

    def apply(self, body: dict[str, Any]) -> None:
        """Create or update a resource by server-side apply, taking over fields from other managers."""
        meta = body["metadata"]
        self._call(lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body, field_manager=FIELD_MANAGER,
            force=True, _content_type=APPLY, _request_timeout=REQUEST_TIMEOUT, _preload_content=False).drain_conn())

    def delete(self, key: ModelKey) -> bool:
        """Ask for deletion (finalizers then hold it until released); False when already gone."""
        try:
            self._call(lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, key.namespace, PLURAL, key.name, _request_timeout=REQUEST_TIMEOUT))
        except ClusterError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def remove_finalizer(self, key: ModelKey, finalizer: str, finalizers: list[str]) -> None:
        """Remove `finalizer`, which `finalizers` (as last seen) holds; if the list changed since,
        the server refuses (422) rather than remove another controller's finalizer."""
        index = finalizers.index(finalizer)
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        self._call(lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, key.namespace, PLURAL, key.name, patch, _content_type=JSON_PATCH,
            _request_timeout=REQUEST_TIMEOUT))

    def patch_annotations(self, key: ModelKey, annotations: dict[str, str | None]) -> None:
        """Merge annotations (None removes one) under the controller's own field manager, so that the
        sync's server-side apply, which does not list them, leaves them alone."""
        self._call(lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, key.namespace, PLURAL, key.name, {"metadata": {"annotations": annotations}},
            field_manager=CONTROLLER_MANAGER, _request_timeout=REQUEST_TIMEOUT))

    def patch_status(self, key: ModelKey, status: dict[str, Any]) -> None:
        """Merge `status` into the status subresource (the only way status is written)."""
        self._call(lambda: self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, key.namespace, PLURAL, key.name, {"status": status}, _request_timeout=REQUEST_TIMEOUT,
            _preload_content=False).drain_conn())

    def event(self, key: ModelKey, reason: str, message: str, warning: bool = False) -> None:
        """Record a Kubernetes Event on the resource (best effort: an Event is never worth a failure)."""
        now = datetime.now(timezone.utc)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{key.name}.", namespace=key.namespace),
            involved_object=client.V1ObjectReference(api_version=API_VERSION, kind=KIND, name=key.name,
                                                     namespace=key.namespace),
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


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except ValueError:
        return exc.reason or str(exc.status)
