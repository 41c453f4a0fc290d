"""The Ollama servers of a fleet, as the reconciler holds them: per server a client, a pull pool, its
last listing and how it was last seen.

The fleet follows an `InventorySource` (refreshed at the start of every cycle): a server that joins
gets its client and pool, and must be listed before anything is planned on what it holds; one that
leaves is let go (its pulls in flight end on their own; nothing is ever deleted on it). Listings run
in parallel on a bounded pool of threads, so a full cycle over ten servers costs about one listing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType

from ..models.naming import normalize_reference
from ..plan import InstalledModel
from ..state import DEFAULT_SERVER, ServerSeen, StateStore, utc_rfc3339
from .inventory import FileProblem, Inventory, InventorySource, Server
from .pulls import BACKOFF_BASE, PullPool
from .server import Keep, ModelOperationFailed, ModelServer, OllamaServer, ServerUnreachable, Tags

log = logging.getLogger("ollama_gitops.fleet")

LISTING_THREADS = 8  # listings at once on a full cycle

ClientFactory = Callable[[Server], ModelServer]
PullFinished = Callable[[str, str, "InstalledModel | None", "float | None"], None]
"""`(server name, reference, installed, retry_at)`, after each pull on any server."""


@dataclass
class Member:
    """One server of the fleet and what the reconciler keeps about it."""

    server: Server
    client: ModelServer
    pulls: PullPool
    observed: dict[str, InstalledModel] | None = None  # the last listing, kept current by pulls and deletes
    must_list: bool = True  # new, its last listing failed, or a problem there: list it next cycle
    listed_digest: str | None = None  # the digest of the body `observed` was decoded from (`Tags.digest`)
    # Per reference the reconciler's own pulls and deletes changed in `observed` since that listing,
    # what the listing said of it (None: not there): `observed` is that listing again once they are put back.
    since_listed: dict[str, InstalledModel | None] = field(default_factory=dict)
    seen: ServerSeen = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.seen is None:
            self.seen = ServerSeen(self.server.name, self.server.url, self.server.labels)

    @property
    def name(self) -> str:
        return self.server.name


@dataclass(frozen=True)
class Listing:
    """What listing one server gave: its models, or why it could not be listed."""

    observed: Mapping[str, InstalledModel] | None
    error: str | None = None
    unreachable: bool = False  # the error is that the server could not be reached at all
    # The server's body was byte-identical to its last listing's: nothing was decoded, and `drifted` are
    # the references whose entries differ from the kept listing (see `Fleet._list`); else compare them.
    unchanged: bool = False
    drifted: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FleetChange:
    """What a refresh of the inventory changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    relabelled: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # why the inventory's newest content is not used (the last good one is)


class Fleet:
    """The servers being kept in line; thread-safe (pulls end on their own threads)."""

    def __init__(
        self,
        source: InventorySource,
        store: StateStore,
        *,
        client_factory: ClientFactory | None = None,
        concurrency: int = 2,
        clock: Callable[[], float] = time.time,
        on_pull_finished: PullFinished | None = None,
        backoff_base: float = BACKOFF_BASE,
        listing_threads: int = LISTING_THREADS,
    ) -> None:
        self._source = source
        self._store = store
        self._client_factory = client_factory or (lambda server: OllamaServer(server.url))
        self._concurrency = concurrency  # per server
        self._clock = clock
        self._on_pull_finished = on_pull_finished
        self._backoff_base = backoff_base
        self._listing_threads = listing_threads
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}
        self._gone: list[Member] = []  # left the inventory with pulls in flight: closed when they end
        self._problems: tuple[str, ...] = ()
        self.refresh()

    # -- the inventory ---------------------------------------------------------------------------------
    def refresh(self) -> FleetChange:
        """Follow the inventory source: new servers join (to be listed), those gone are let go."""
        snapshot = self._source.refresh()
        return self._follow(snapshot.inventory, snapshot.problems)

    def _follow(self, inventory: Inventory, problems: tuple[FileProblem, ...]) -> FleetChange:
        with self._lock:
            wanted = {server.name: server for server in inventory}
            removed = tuple(sorted(set(self._members) - set(wanted)))
            for name in removed:
                self._let_go(self._members.pop(name))
            added, relabelled = [], []
            for name, server in sorted(wanted.items()):
                member = self._members.get(name)
                if member is not None and member.server.url != server.url:
                    # The same name at another address is another machine: start over with it
                    # (what was recorded stays: the name is the identity, as for `default`).
                    self._let_go(self._members.pop(name))
                    member = None
                if member is None:
                    self._members[name] = self._member(server)
                    added.append(name)
                elif member.server.labels != server.labels:
                    # Models may be placed on it or taken off: plan all of them there, on a fresh listing.
                    member.server, member.must_list = server, True
                    member.seen = replace(member.seen, labels=server.labels)
                    relabelled.append(name)
            self._members = dict(sorted(self._members.items()))
        for name in added:
            log.info("action=server-joined server=%s url=%s", name, wanted[name].url)
        for name in removed:
            log.info("action=server-left server=%s (nothing is deleted on it)", name)
        said = tuple(problem.message for problem in problems)
        if said != self._problems:  # said once, when it changes; every cycle's message says it too
            for line in said:
                log.warning("action=inventory-problem keeping the last good servers: %s", line)
            self._problems = said
        return FleetChange(tuple(added), removed, tuple(relabelled), said)

    def _member(self, server: Server) -> Member:
        client = self._client_factory(server)
        name = server.name
        pulls = PullPool(client, self._store, concurrency=self._concurrency, clock=self._clock,
                         on_finished=lambda reference, installed, retry_at: self._pull_finished(
                             name, reference, installed, retry_at),
                         backoff_base=self._backoff_base, name=name)
        return Member(server, client, pulls)

    def _let_go(self, member: Member) -> None:
        member.pulls.shutdown(wait=False)
        if member.pulls.in_flight():
            self._gone.append(member)
        else:
            _close(member.client)

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._members)

    @property
    def lone_default(self) -> bool:
        """One server named `default`: the reconciler as it was before fleets (messages unchanged)."""
        return self.names == (DEFAULT_SERVER,)

    def member(self, name: str) -> Member | None:
        with self._lock:
            return self._members.get(name)

    def __iter__(self) -> Iterator[Member]:
        with self._lock:
            return iter(list(self._members.values()))

    def seen(self) -> tuple[ServerSeen, ...]:
        """How every server was last seen, sorted by name."""
        with self._lock:
            return tuple(member.seen for member in self._members.values())

    def adopt_seen(self, recorded: Collection[ServerSeen]) -> None:
        """Take how an earlier process last saw these servers (`sync.json`) for those of the same name
        and URL, when this one has not asked them itself: what it says of them stays as it was."""
        with self._lock:
            for seen in recorded:
                member = self._members.get(seen.name)
                if member is not None and member.server.url == seen.url and member.seen.reachable is None:
                    member.seen = replace(seen, labels=member.server.labels)

    def observed(self, name: str) -> Mapping[str, InstalledModel] | None:
        """A read-only view of the last listing of `name`, kept current (None: not listed, or it
        failed). Not a copy: pulls that end add to it meanwhile, so it is for looking models up, not
        for iterating (`plan()` only looks up; the cycle's own deletes are the only removals)."""
        with self._lock:
            member = self._members.get(name)
            return None if member is None or member.observed is None else MappingProxyType(member.observed)

    # -- listing -----------------------------------------------------------------------------------------
    def list_servers(self, names: Collection[str]) -> dict[str, Listing]:
        """List these servers, in parallel; each one's listing is kept (or its failure noted)."""
        members = [m for m in self if m.name in names]
        if not members:
            return {}
        if len(members) == 1:
            results = [self._list(members[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(self._listing_threads, len(members)),
                                    thread_name_prefix="listing") as pool:
                results = list(pool.map(self._list, members))
        return {member.name: result for member, result in zip(members, results)}

    def _list(self, member: Member) -> Listing:
        # A first listing after the records were read (a restart's, say) keeps their strings of each
        # model they say the same of, rather than a copy of each beside them (a cold start's
        # records take the listing's instead).
        keep = (partial(_recorded_entry, self._store, member.name)
                if member.observed is None and self._store.loaded and self._store.any_recorded() else None)
        try:
            tags = _tags(member.client, member.listed_digest, keep)
        except ServerUnreachable as exc:
            tags, listing = None, Listing(None, str(exc), unreachable=True)
        except ModelOperationFailed as exc:
            tags, listing = None, Listing(None, str(exc))
        else:
            kept = member.observed  # (swapped under the lock; looking entries up in it needs none)
            if tags.models is not None and kept is not None:
                tags = replace(tags, models=_share_unchanged(tags.models, kept))
            listing = Listing(tags.models)
        reachable = tags is not None
        version = member.seen.version
        if reachable and member.seen.reachable is not True:
            version = _version(member.client)  # asked when it is first seen, and when it is back
        with self._lock:
            if tags is not None and tags.models is None and member.observed is not None:
                listing = self._unchanged(member)
            elif tags is not None and tags.models is not None:
                # The listing's own dict is kept (no copy of a hundred thousand entries), and what this
                # listing gave is a view of it, kept current as the unchanged case's is.
                member.observed, member.listed_digest = tags.models, tags.digest
                member.since_listed = {}
                listing = Listing(MappingProxyType(member.observed))
            else:  # failed; or (a listing forgotten meanwhile) unchanged with nothing kept: list in full next
                member.observed, member.listed_digest, member.since_listed = None, None, {}
                if tags is not None:
                    listing = Listing(None, "the listing was forgotten while it was read; listed again next cycle")
            member.must_list = listing.observed is None
            if reachable:
                member.seen = replace(member.seen, reachable=True, version=version, error=listing.error,
                                      last_seen=utc_rfc3339(self._clock()))
            elif listing.unreachable:
                member.seen = replace(member.seen, reachable=False, error=listing.error)
            else:  # it answered, with an error: it is reachable
                member.seen = replace(member.seen, reachable=True, error=listing.error,
                                      last_seen=utc_rfc3339(self._clock()))
        return listing

    @staticmethod
    def _unchanged(member: Member) -> Listing:
        """The server said byte for byte what it said at the listing `member.observed` was decoded
        from, so it holds just what that listing says. The kept listing is that one with the
        reconciler's own pulls and deletes since applied (`since_listed`), and only there can it
        differ from what the server holds now: a pull or delete undone behind its back (a model pulled
        and then removed by hand), or one whose end the server does not show (yet). So those entries
        are put back as the server says them, and the ones that differed are the drift; every other
        entry is the same in both without being looked at. (Comparing with the kept listing instead
        of the server's last word would miss exactly those.) Called with the fleet's lock held."""
        assert member.observed is not None
        drifted = []
        for reference, said in member.since_listed.items():
            if listed_entry(member.observed.get(reference)) != listed_entry(said):
                drifted.append(reference)
            if said is None:
                member.observed.pop(reference, None)
            else:
                member.observed[reference] = said
        member.since_listed = {}
        return Listing(MappingProxyType(member.observed), unchanged=True, drifted=frozenset(drifted))

    def due(self) -> set[str]:
        """The servers to list before the next plan: new ones, those whose last listing failed or
        that had a problem, and those a pull found unreachable."""
        due = set()
        for member in self:
            unreachable = member.pulls.take_unreachable()
            if unreachable is not None:
                with self._lock:
                    member.seen = replace(member.seen, reachable=False, error=unreachable)
            if member.must_list or unreachable is not None:
                due.add(member.name)
        return due

    def mark(self, names: Collection[str]) -> None:
        """List these servers again next cycle (something went wrong on them)."""
        with self._lock:
            for name in names:
                if name in self._members:
                    self._members[name].must_list = True

    def forget_listings(self) -> None:
        """Every server is listed again next cycle."""
        with self._lock:
            for member in self._members.values():
                member.observed, member.must_list, member.listed_digest, member.since_listed = None, True, None, {}

    def deleted(self, name: str, reference: str) -> None:
        """`reference` was deleted from `name`: the kept listing no longer has it."""
        with self._lock:
            member = self._members.get(name)
            if member is not None and member.observed is not None:
                member.since_listed.setdefault(reference, member.observed.get(reference))
                member.observed.pop(reference, None)

    # -- pulls -------------------------------------------------------------------------------------------
    def in_flight(self, name: str) -> frozenset[str]:
        member = self.member(name)
        return member.pulls.in_flight() if member is not None else frozenset()

    def any_in_flight(self) -> bool:
        return any(member.pulls.in_flight() for member in self)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every pull in flight now, on every server, to end; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for member in self:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not member.pulls.wait(remaining):
                return False
        return True

    def _pull_finished(self, name: str, reference: str, installed: InstalledModel | None,
                       retry_at: float | None) -> None:
        with self._lock:
            member = self._members.get(name)
            if member is not None and installed is not None:
                if member.observed is not None:
                    member.since_listed.setdefault(reference, member.observed.get(reference))
                    member.observed[reference] = installed
                member.seen = replace(member.seen, reachable=True, error=None, last_seen=utc_rfc3339(self._clock()))
            for gone in [m for m in self._gone if not m.pulls.in_flight()]:
                self._gone.remove(gone)
                _close(gone.client)
        if self._on_pull_finished is not None:
            self._on_pull_finished(name, reference, installed, retry_at)

    def shutdown(self) -> None:
        """Stop taking pulls and close the connections no pull in flight still uses."""
        for member in [*self, *self._gone]:
            member.pulls.shutdown(wait=False)
            if not member.pulls.in_flight():
                _close(member.client)


def _tags(client: ModelServer, unless: str | None, keep: Keep | None = None) -> Tags:
    """`client`'s listing, not decoded when its body's digest is `unless` (a client without `tags()`,
    as tests' fakes are, is decoded every time: its digest is never the same), each entry as `keep`
    gives it (see `OllamaServer.tags`)."""
    tags = getattr(client, "tags", None)
    if tags is None:  # (A fake's `installed()` may be its own dict: the fleet keeps and changes what it is given.)
        return Tags("", dict(client.installed()))
    return tags(unless, keep)


def _share_unchanged(listed: dict[str, InstalledModel], kept: Mapping[str, InstalledModel]) -> dict[str, InstalledModel]:
    """`listed` with each entry that equals the kept listing's made the kept one, under the kept
    one's key. A listing is decoded again whenever anything on the server changed; the kept entries'
    reference, digest and size are the records' own strings (a record made from a listing holds
    them), while the new ones would be a second copy of every model's. So a listing that changed in
    one model keeps one new entry, and the plan's answers are the same (the entries are equal)."""
    shared = {}
    for reference, model in listed.items():
        before = kept.get(reference)
        if before is not None and before == model:
            model = before
        # A key is its entry's normalised reference, its very string when that is in normal form.
        shared[normalize_reference(model.reference)] = model
    return shared


def _recorded_entry(store: StateStore, server: str, model: InstalledModel) -> InstalledModel:
    """`model`, an entry of `server`'s listing, made of the objects of the record of its model where
    that says the same (the reference as spelled, the size and the digest): the entries are equal,
    so what the plan decides is the same."""
    record = store.recorded_as(normalize_reference(model.reference))
    status = record.servers.get(server) if record is not None else None
    if (status is None or status.size != model.size or status.digest != model.digest
            or record.spec.reference != model.reference):  # type: ignore[union-attr]
        return model
    return InstalledModel(record.spec.reference, status.size, status.digest, model.modified)  # type: ignore[union-attr,arg-type]


def listed_entry(installed: InstalledModel | None) -> tuple[str, str, int] | None:
    """What the plan reads of a listing's entry (not when Ollama says it was modified)."""
    return None if installed is None else (installed.reference, installed.digest, installed.size)


def _version(client: ModelServer) -> str | None:
    """Ollama's version (`GET /api/version`), None when the client cannot say or the server does not."""
    ask = getattr(client, "version", None)
    if ask is None:
        return None
    try:
        return ask()
    except (ServerUnreachable, ModelOperationFailed):
        return None


def _close(client: ModelServer) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        close()
