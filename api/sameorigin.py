"""Which requests the API answers by where they come from: the host names it serves, and writes
only from its own origin.

Without an API key the API listens on loopback, where any web page the user opens can reach it:
a page may send a cross-site "simple" request (a POST with `Content-Type: text/plain` needs no
preflight), or have its own name resolve to 127.0.0.1 (DNS rebinding) and then read and write as
if it were the API's own page. Two checks close both:

- the `Host` header must name a host the API serves (loopback names, the listen address and
  `--allowed-host` entries): a rebound page sends its own name. With an API key this is not
  checked: the key already stops every page (it cannot know it), and in a cluster the API is
  reached under names no one lists (Service names, pod IPs for probes).
- a state-changing request that carries an `Origin` header must carry the API's own origin: browsers
  send one with every cross-site write, while the seed's clients, curl and Git hosts send none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = "*"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WILDCARD_LISTEN = frozenset({"0.0.0.0", "::", ""})

_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")


def host_name(text: str) -> str | None:
    """The host name in a `Host` header value (`name`, `name:port`, `[v6]:port`): lowered, without
    brackets, port or a trailing dot; None when it is not a host name at all."""
    match = _HOST.fullmatch(text.strip())
    if match is None:
        return None
    name = match["name"].lower()
    name = name[1:-1] if name.startswith("[") else name.rstrip(".")
    return name or None


@dataclass(frozen=True)
class HostCheck:
    """The host names the API answers for (`*`: any)."""

    allowed: frozenset[str]

    @classmethod
    def serving(cls, listen_host: str, extra: tuple[str, ...] = ()) -> HostCheck:
        """Loopback names, the listen address (unless it is every interface) and `extra`; raises
        ValueError naming an entry that is not a host name."""
        names = set(LOOPBACK_NAMES)
        if listen_host not in WILDCARD_LISTEN:
            names.add(listen_host.lower())
        for entry in extra:
            name = ANY_HOST if entry.strip() == ANY_HOST else host_name(entry)
            if name is None:
                raise ValueError(f"{entry!r} is not a host name")
            names.add(name)
        return cls(frozenset(names))

    def refusal(self, host_header: str | None) -> str | None:
        """Why a request with this `Host` header is not answered; None when it is."""
        if host_header is None or ANY_HOST in self.allowed:  # no Host: not a browser (HTTP/1.0)
            return None
        name = host_name(host_header)
        if name is not None and name in self.allowed:
            return None
        served = ", ".join(sorted(f"[{n}]" if ":" in n else n for n in self.allowed))
        return (f"host {host_header[:100]!r} is not one this API serves ({served}): without an API key it "
                "answers only for these names; add another with --allowed-host")


def origin_refusal(method: str, origin: str | None, host_header: str | None) -> str | None:
    """Why a request from `origin` is refused; None when it is not a write, carries no `Origin`, or
    comes from the API's own origin (a page it serves: same host and port, over HTTP or HTTPS
    when a proxy terminates TLS in front of it)."""
    if method.upper() not in STATE_CHANGING or origin is None:
        return None
    try:
        parts = urlsplit(origin.strip())
        ours = parts.scheme in ("http", "https") and host_header is not None and \
            parts.netloc.lower() == host_header.strip().lower() and not parts.path
    except ValueError:
        ours = False
    if ours:
        return None
    return (f"cross-origin request refused: Origin {origin[:200]!r} is not this API's own; writes are "
            "accepted from clients that send no Origin, or from pages this API serves")
