"""`ollama-gitops plan`: a plan preview (the API's `GET /api/v1/plan` JSON) as text, markdown or JSON.

Light on purpose (a quick command, tests/test_cli_imports.py): urllib and the standard library only.
The markdown is made for a pull request comment: its first line is a marker that lets a workflow
find its own comment again and edit it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from ..reconciler.models.sizes import format_size

COMMENT_MARKER = "<!-- ollama-gitops plan -->"
FORMATS = ("text", "markdown", "json")
PULLS = ("pull", "refresh")
OTHER_ACTIONS = (("keep", "kept"), ("adopt", "already there"), ("wait", "waiting"), ("forget", "forgotten"))


class PlanUnavailable(Exception):
    """No plan: the API could not be reached, refused, or could not plan the ref."""


def fetch(api_url: str, api_key: str | None, ref: str, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the API to plan `ref` (a fetch of the ref and registry lookups may take a while)."""
    url = f"{api_url.rstrip('/')}/api/v1/plan?{urllib.parse.urlencode({'ref': ref})}"
    request = urllib.request.Request(url, headers={"X-API-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            detail = exc.reason
        raise PlanUnavailable(f"the API at {api_url} could not plan {ref!r} (HTTP {exc.code}): {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PlanUnavailable(f"the API at {api_url} cannot be reached: {reason}") from None


def summary(plan: dict[str, Any]) -> str:
    """`2 pulls (4.7 GiB on 3 servers), 1 delete, 1 problem`, then what else the plan holds."""
    counts = Counter(a["action"] for a in plan["actions"])
    pulls = [a for a in plan["actions"] if a["action"] in PULLS]
    parts = [f"{_count(len(pulls), 'pull')} ({_pull_sizes(plan, pulls)})" if pulls else "0 pulls",
             _count(counts["delete"], "delete")]
    if counts["move"]:
        parts.append(_count(counts["move"], "move"))
    parts += [f"{counts[action]} {words}" for action, words in OTHER_ACTIONS if counts[action]]
    parts.append(_count(len(plan["problems"]), "problem"))
    return ", ".join(parts)


def _pull_sizes(plan: dict[str, Any], pulls: list[dict[str, Any]]) -> str:
    servers = len({a["server"] for a in pulls})
    if plan.get("offline"):
        return "sizes and servers unknown: planned offline"
    known = sum(a.get("downloadBytes", 0) for a in pulls)
    unknown = sum(1 for a in pulls if "downloadBytes" not in a)
    where = f"on {_count(servers, 'server')}"
    if unknown == len(pulls):
        return f"size unknown, {where}"
    if unknown:
        return f"{format_size(known)} and {unknown} unknown {where}"
    return f"{format_size(known)} {where}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _size(action: dict[str, Any]) -> str:
    if action["action"] not in PULLS:
        return ""
    return format_size(action["downloadBytes"]) if "downloadBytes" in action else "unknown"


def _problem(problem: dict[str, Any]) -> str:
    where = f"{problem['path']}:{problem['line']}" if problem.get("line") else problem["path"]
    return f"{where}: {problem['message']}"


def _server_line(server: dict[str, Any], offline: bool) -> str:
    if offline:
        return server.get("note") or "servers unknown (offline)"
    total = format_size(server["downloadBytes"])
    unknown = f" and {server['unknownSizes']} unknown" if server["unknownSizes"] else ""
    line = (f"server {server['name']}{' (' + server['url'] + ')' if server.get('url') else ''}: "
            f"{_count(server['pulls'], 'pull')} ({total}{unknown} to download), {_count(server['deletes'], 'delete')}")
    return line + (f"; {server['note']}" if server.get("note") else "")


def _header(plan: dict[str, Any]) -> str:
    base = f" against {plan['base'][:12]}" if plan.get("base") else ""
    return f"plan of {plan['ref']} ({plan['commit'][:12]}){base}"


def render_text(plan: dict[str, Any]) -> str:
    """A table of the actions, the servers' totals and the problems."""
    lines = [_header(plan) + ": " + summary(plan)]
    rows = [("SERVER", "ACTION", "MODEL", "REFERENCE", "DOWNLOAD", "REASON")]
    rows += [(a["server"], a["action"], a["model"], a["reference"], _size(a) or "-", a["reason"]) for a in plan["actions"]]
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines += ["  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[5]]) for row in rows]
    else:
        lines.append("no changes to any server")
    lines += [_server_line(s, plan.get("offline", False)) for s in plan["servers"]]
    lines += [f"note: {n}" for n in plan.get("notes", [])]
    lines += [f"info: {i['server']}: {i['model']} ({i['reference']}): {i['message']}" for i in plan.get("information", [])]
    lines += [f"problem: {_problem(p)}" for p in plan["problems"]]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(plan: dict[str, Any]) -> str:
    """For a pull request comment: the summary, a table per server, the problems as `path:line`."""
    lines = [COMMENT_MARKER, f"### ollama-gitops: {_cell(_header(plan))}", "", f"**{summary(plan)}**", ""]
    offline = plan.get("offline", False)
    if offline:
        lines += ["Planned offline (no service was asked): sizes and servers are unknown; against the base's "
                  "files, as if every model there were on the servers and pulled by ollama-gitops.", ""]
    for server in plan["servers"]:
        actions = [a for a in plan["actions"] if a["server"] == server["name"]]
        title = "Servers unknown (offline)" if offline else f"Server `{server['name']}`"
        if not offline:
            title += (f": {_count(server['pulls'], 'pull')}, {format_size(server['downloadBytes'])} to download"
                      + (f" ({server['unknownSizes']} unknown)" if server["unknownSizes"] else "")
                      + f", {_count(server['deletes'], 'delete')}")
        lines += [f"#### {title}", ""]
        if server.get("note") and not offline:  # offline, the line above the tables says it
            lines += [f"_{_cell(server['note'])}_", ""]
        if actions:
            lines += ["| action | model | reference | download | reason |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {a['action']} | `{a['model']}` | `{a['reference']}` | {_size(a)} | {_cell(a['reason'])} |"
                      for a in actions]
        else:
            lines.append("No changes.")
        lines.append("")
    if plan.get("information"):
        lines += ["#### Information", ""]
        lines += [f"- `{i['model']}` on `{i['server']}`: {_cell(i['message'])}" for i in plan["information"]]
        lines.append("")
    if plan.get("notes"):
        lines += [f"> {_cell(n)}" for n in plan["notes"]] + [""]
    if plan["problems"]:
        lines += ["#### Problems", ""]
        lines += [f"- `{p['path']}:{p['line']}`: {_cell(p['message'])}" if p.get("line")
                  else f"- `{p['path']}`: {_cell(p['message'])}" for p in plan["problems"]]
        lines.append("")
    return "\n".join(lines)


def render(plan: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(plan, indent=2) + "\n"
    return render_markdown(plan) if fmt == "markdown" else render_text(plan)
