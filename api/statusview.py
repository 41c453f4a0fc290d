"""`ollama-gitops status`: the models and the sync summary as a terminal table; for a fleet, the
models by servers and each server's reachability too."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

BAR_WIDTH = 20
# The API's words, not imported from the reconciler: `status` must not load it (tests/test_cli_imports.py).
STATES = ("Ready", "Pending", "Pulling", "Failed")
DEFAULT_SERVER = "default"  # the one server given the old way: shown as today, without a servers table


class ApiUnavailable(Exception):
    """The API could not be asked (down, refused the key, answered garbage)."""


@dataclass(frozen=True)
class Snapshot:
    models: list[dict[str, Any]]
    sync: dict[str, Any]
    servers: list[dict[str, Any]] = field(default_factory=list)  # `GET /api/v1/servers`' items

    @property
    def server_names(self) -> list[str]:
        """The servers' names: the API's inventory, else (an API that reads no reconciler's summary,
        such as `api` alone in Kubernetes mode) those the models are shown on."""
        if self.servers:
            return [server["name"] for server in self.servers]
        return sorted({entry["name"] for model in self.models for entry in model.get("servers", [])})

    @property
    def fleet(self) -> bool:
        """More than the one server given the old way: the output shows servers."""
        return self.server_names not in ([], [DEFAULT_SERVER])

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
    """Ask the API for the models of a namespace, the sync status and the servers (an API from
    before fleets has no `/api/v1/servers`: no servers are shown then)."""
    base = api_url.rstrip("/")
    query = f"?{urllib.parse.urlencode({'namespace': namespace})}" if namespace else ""
    models = _get(f"{base}/api/v1/models{query}", api_key, timeout)["items"]
    sync = _get(f"{base}/api/v1/status", api_key, timeout)
    servers = _get(f"{base}/api/v1/servers", api_key, timeout, missing={"items": []})["items"]
    return Snapshot(models, sync, servers)


def render(snapshot: Snapshot) -> str:
    """The table, for a fleet the models by servers, then the sync summary, the servers and any problems."""
    rows = [("NAME", "MODEL", "STATE", "SIZE", "LAST PULL", "")]
    for m in snapshot.models:
        rows.append((m["name"], f"{m['modelName']}:{m['tag']}", m["state"], m.get("formattedSize", "-"),
                     m.get("lastPullTime", "-"), _detail(m)))
    lines = _table(rows)
    if snapshot.fleet:
        lines.append("")
        lines.extend(_table(_by_servers(snapshot)))
    sync = snapshot.sync
    lines.append("")
    lines.append(f"sync: {sync.get('lastCycleOutcome') or 'no cycle yet'}"
                 f" at {sync.get('lastCycleTime') or '-'}"
                 f"; applied {(sync.get('lastAppliedCommit') or '-')[:12]}"
                 f", fetched {(sync.get('lastFetchedCommit') or '-')[:12]}")
    if sync.get("lastCycleMessage"):
        lines.append(f"      {sync['lastCycleMessage']}")
    if snapshot.fleet:
        lines.extend(_server_line(server) for server in snapshot.servers)
    if sync.get("repository"):
        lines.append(f"repository: {sync['repository']} (branch {sync.get('branch') or '-'})")
    for problem in sync.get("problems", []):
        where = f"{problem['path']}:{problem['line']}" if problem.get("line") else problem["path"]
        lines.append(f"problem: {where}: {problem['message']}")
    return "\n".join(lines) + "\n"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns; the last column is left as long as it is (errors, progress bars)."""
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    return ["  ".join(cell.ljust(widths[i]) if i < last else cell for i, cell in enumerate(row)).rstrip()
            for row in rows]


def _by_servers(snapshot: Snapshot) -> list[tuple[str, ...]]:
    """A model per row, a server per column, its state there in each cell ('-': not placed there)."""
    names = snapshot.server_names
    rows = [("NAME", *names)]
    for model in snapshot.models:
        states = {entry["name"]: entry["state"] for entry in model.get("servers", [])}
        rows.append((model["name"], *(states.get(name, "-") for name in names)))
    return rows


def _server_line(server: dict[str, Any]) -> str:
    """`server NAME (URL): reachable, ...`: its version, last contact and models per state, or why not."""
    if server.get("reachable") is None:
        health = "not contacted yet"
    elif server["reachable"]:
        health = "reachable" + (f", Ollama {server['version']}" if server.get("version") else "")
    else:
        health = "UNREACHABLE" + (f": {server['error']}" if server.get("error") else "")
    seen = f", last seen {server['lastSeen']}" if server.get("lastSeen") else ""
    counts = server.get("models", {})
    tally = ", ".join(f"{counts.get(state, 0)} {state}" for state in STATES)
    return f"server {server['name']} ({server.get('url', '-')}): {health}{seen}; models: {tally}"


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


def _get(url: str, api_key: str | None, timeout: float, missing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON at `url`; `missing` is the answer for a 404 when the path may not exist."""
    request = urllib.request.Request(url, headers={"X-API-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and missing is not None:
            return missing
        if exc.code == 401:
            raise ApiUnavailable(f"{url} refused the API key (401): set OLLAMA_GITOPS_API_KEY or --api-key-file") from None
        try:
            detail = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            detail = exc.reason
        raise ApiUnavailable(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiUnavailable(f"cannot reach the API at {url}: {exc}") from None
