"""`ollama-gitops status`: the models and the sync summary as a terminal table."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

BAR_WIDTH = 20


class ApiUnavailable(Exception):
    """The API could not be asked (down, refused the key, answered garbage)."""


@dataclass(frozen=True)
class Snapshot:
    models: list[dict[str, Any]]
    sync: dict[str, Any]

    @property
    def healthy(self) -> bool:
        """No model Failed, no model file with a problem, and the sync well (last cycle not Failed,
        the API's fetch without error)."""
        return (not any(m.get("state") == "Failed" for m in self.models) and not self.sync.get("problems")
                and self.sync.get("lastCycleOutcome") != "Failed" and not self.sync.get("gitError"))

    def settled(self, since: Snapshot) -> bool:
        """Nothing more will change without a new commit: no model Pending or Pulling and the newest
        commit applied, or a cycle has ended since `since` and Failed (Ollama down, a refused prune)."""
        if self.sync.get("lastCycleOutcome") == "Failed" and self.sync.get("lastCycleTime") != since.sync.get("lastCycleTime"):
            return True
        return (not any(m.get("state") in ("Pending", "Pulling") for m in self.models)
                and self.sync.get("lastAppliedCommit") == self.sync.get("lastFetchedCommit"))


def fetch(api_url: str, api_key: str | None, namespace: str | None, timeout: float = 10.0) -> Snapshot:
    """Ask the API for the models of a namespace and the sync status."""
    query = f"?{urllib.parse.urlencode({'namespace': namespace})}" if namespace else ""
    models = _get(f"{api_url.rstrip('/')}/api/v1/models{query}", api_key, timeout)["items"]
    sync = _get(f"{api_url.rstrip('/')}/api/v1/status", api_key, timeout)
    return Snapshot(models, sync)


def render(snapshot: Snapshot) -> str:
    """The table, then the sync summary and any problems."""
    rows = [("NAME", "MODEL", "STATE", "SIZE", "LAST PULL", "")]
    for m in snapshot.models:
        rows.append((m["name"], f"{m['modelName']}:{m['tag']}", m["state"], m.get("formattedSize", "-"),
                     m.get("lastPullTime", "-"), _detail(m)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(row)).rstrip() for row in rows]
    sync = snapshot.sync
    lines.append("")
    lines.append(f"sync: {sync.get('lastCycleOutcome') or 'no cycle yet'}"
                 f" at {sync.get('lastCycleTime') or '-'}"
                 f"; applied {(sync.get('lastAppliedCommit') or '-')[:12]}"
                 f", fetched {(sync.get('lastFetchedCommit') or '-')[:12]}")
    if sync.get("lastCycleMessage"):
        lines.append(f"      {sync['lastCycleMessage']}")
    if sync.get("repository"):
        lines.append(f"repository: {sync['repository']} (branch {sync.get('branch') or '-'})")
    for problem in sync.get("problems", []):
        where = f"{problem['path']}:{problem['line']}" if problem.get("line") else problem["path"]
        lines.append(f"problem: {where}: {problem['message']}")
    return "\n".join(lines) + "\n"


def _detail(model: dict[str, Any]) -> str:
    progress = model.get("progress")
    if model.get("state") == "Pulling" and progress and progress.get("total"):
        done = min(1.0, progress["completed"] / progress["total"])
        filled = int(done * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:6.1%}"
    detail = model.get("error", "")
    if model.get("suspended"):
        return f"SUSPENDED {detail}".rstrip()
    return detail


class EventWatcher:
    """Follows the API's events stream in a thread, so that `status --watch` redraws when something
    changes rather than on a timer; `live` says whether the stream is open. When it cannot be opened
    or drops (an older API, every stream slot taken, a restart), it is tried again every `retry`
    seconds, resuming from the last event's id, and the caller polls meanwhile."""

    def __init__(self, api_url: str, api_key: str | None, *, retry: float = 5.0, read_timeout: float = 60.0) -> None:
        self._url = f"{api_url.rstrip('/')}/api/v1/events"
        self._headers = {"Accept": "text/event-stream", **({"X-API-Key": api_key} if api_key else {})}
        self._retry = retry
        self._read_timeout = read_timeout  # beyond the heartbeat: a silent stream is a dead one
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._last_id: str | None = None
        self.live = False
        self._thread = threading.Thread(target=self._run, name="status-events", daemon=True)

    def start(self) -> EventWatcher:
        self._thread.start()
        return self

    def wait(self, timeout: float) -> bool:
        """Until an event comes (True) or `timeout` seconds pass (False)."""
        changed = self._changed.wait(timeout)
        self._changed.clear()
        return changed

    def close(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow()
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self.live = False
            self._stopping.wait(self._retry)

    def _follow(self) -> None:
        headers = dict(self._headers)
        if self._last_id:
            headers["Last-Event-ID"] = self._last_id
        request = urllib.request.Request(self._url, headers=headers)
        with urllib.request.urlopen(request, timeout=self._read_timeout) as response:
            self.live = True
            event_type = None
            for raw in response:
                if self._stopping.is_set():
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("id:"):
                    self._last_id = line[3:].strip()
                elif line.startswith("event:"):
                    event_type = line[6:].strip()
                elif line == "" and event_type is not None:
                    if event_type != "hello":
                        self._changed.set()
                    event_type = None


def _get(url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"X-API-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise ApiUnavailable(f"{url} refused the API key (401): set OLLAMA_GITOPS_API_KEY or --api-key-file") from None
        try:
            detail = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            detail = exc.reason
        raise ApiUnavailable(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiUnavailable(f"cannot reach the API at {url}: {exc}") from None
