"""Leader election among replicas (`LeaderElector`), with the real `kubernetes` client and its
``leaderelection`` package against the stand-in API server over real HTTP.

Timings are the shortest the package accepts (lease 2 s, renew deadline 1.5 s, retry 1 s). Tests wait
on conditions set from the callbacks, from a watch on the Lease or from log records, each bounded by
WAIT; nothing sleeps and nothing asserts on durations.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client, watch

from ollama_gitops.reconciler.cluster.election import LeaderElector, validate_timings
from standins.kube_apiserver import KubeStandin

NS = "default"
LEASE = "ollama-gitops"
LEASE_PATH = rf"/namespaces/{NS}/leases/{LEASE}$"  # the GET and PUT of the Lease (not its list/watch)
TIMINGS = {"lease_duration": 2, "renew_deadline": 1.5, "retry_period": 1}
WAIT = 60.0  # ceiling for waits on other threads, for a loaded 2-core machine (never reached when all is well)


# ------------------------------------------------------------------------------------------------
# helpers


class Calls:
    """on_started / on_stopped callbacks recording, in order, each call and what `is_leader` said
    during it, and letting a test wait for a condition on them (on a condition shared by all the
    electors of a test, so a wait can be about any of them)."""

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.log: list[tuple[str, bool]] = []
        self.elector: LeaderElector | None = None

    def started(self) -> None:
        self._record("started")

    def stopped(self) -> None:
        self._record("stopped")

    def _record(self, what: str) -> None:
        leading = self.elector.is_leader
        with self.cond:
            self.log.append((what, leading))
            self.cond.notify_all()

    def count(self, what: str) -> int:
        with self.cond:
            return sum(1 for w, _ in self.log if w == what)

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_count(self, what: str, n: int) -> bool:
        return self.wait(lambda: sum(1 for w, _ in self.log if w == what) >= n)

    def alternates(self) -> bool:
        """started, stopped, started, ... with is_leader true in each on_started, false in each on_stopped."""
        with self.cond:
            return all(entry == (("started", True) if i % 2 == 0 else ("stopped", False))
                       for i, entry in enumerate(self.log))


class Replicas:
    """Electors made by a test, each on its own ApiClient, all stopped at the end."""

    def __init__(self, kube: KubeStandin) -> None:
        self.kube = kube
        self.electors: list[LeaderElector] = []
        self.clients: list[client.ApiClient] = []
        self.cond = threading.Condition()

    def make(self, identity: str, *, api_client: client.ApiClient | None = None,
             start: bool = True) -> tuple[LeaderElector, Calls]:
        if api_client is None:
            api_client = self.kube.api_client()
        self.clients.append(api_client)
        calls = Calls(self.cond)
        elector = LeaderElector(api_client, namespace=NS, identity=identity, on_started=calls.started,
                                on_stopped=calls.stopped, **TIMINGS)
        calls.elector = elector
        self.electors.append(elector)
        if start:
            elector.start()
        return elector, calls

    def close(self) -> None:
        for elector in self.electors:
            elector.stop()
            assert not elector.is_leader
            assert elector._thread is None or not elector._thread.is_alive()
        for c in self.clients:
            c.close()


class LogWaiter(logging.Handler):
    """Records what the election's logger says (info and up), for a test to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.cond = threading.Condition()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.messages.append(record.getMessage())
            self.cond.notify_all()

    def wait_for(self, text: str, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: sum(text in m for m in self.messages) >= n, WAIT)


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(bookmark_interval=0) as server:
        yield server


@pytest.fixture
def replicas(kube: KubeStandin) -> Iterator[Replicas]:
    made = Replicas(kube)
    yield made
    made.close()


def log_waiter(name: str) -> Iterator[LogWaiter]:
    handler = LogWaiter()
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def election_log() -> Iterator[LogWaiter]:
    yield from log_waiter("ollama_gitops.cluster.election")


@pytest.fixture
def package_log() -> Iterator[LogWaiter]:
    """What the ``leaderelection`` package itself logs (a follower says why it waits)."""
    yield from log_waiter("leaderelection")


def holder(kube: KubeStandin) -> str:
    (lease,) = kube.leases(NS)
    return lease["spec"]["holderIdentity"]


def watch_renewals(kube: KubeStandin, identity: str, renewals: int, on_each: Callable[[], None]) -> int:
    """Watch the Lease until `identity` has renewed it `renewals` times (renewTime advancing while it
    holds it), calling `on_each` at each renewal; returns how many renewals were seen (bounded by
    the watch's timeout)."""
    seen = []
    with kube.api_client() as c:
        w = watch.Watch()
        for event in w.stream(client.CoordinationV1Api(c).list_namespaced_lease, NS,
                              field_selector=f"metadata.name={LEASE}", timeout_seconds=int(WAIT)):
            spec = event["object"].spec
            if spec.holder_identity != identity:
                continue
            if seen and spec.renew_time > seen[-1]:
                on_each()
            if not seen or spec.renew_time > seen[-1]:
                seen.append(spec.renew_time)
            if len(seen) > renewals:
                w.stop()
    return len(seen) - 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# one elector


def test_a_lone_elector_becomes_leader_and_holds_the_lease(kube, replicas):
    a, calls = replicas.make("replica-a")
    assert calls.wait_count("started", 1)
    assert a.is_leader
    assert calls.log == [("started", True)]  # is_leader was already true inside on_started
    (lease,) = kube.leases(NS)
    assert lease["metadata"]["name"] == LEASE
    assert lease["spec"]["holderIdentity"] == "replica-a" and lease["spec"]["leaseDurationSeconds"] == 2
    assert kube.count("create", path_regex="/leases$") == 1

    a.stop()
    assert not a.is_leader
    assert calls.log == [("started", True), ("stopped", False)]  # on_stopped called by stop(), once
    assert not a._thread.is_alive()
    (lease,) = kube.leases(NS)  # released as client-go releases it: no holder, a lease of 1 s
    assert lease["spec"].get("holderIdentity", "") == "" and lease["spec"]["leaseDurationSeconds"] == 1
    assert lease["spec"]["renewTime"].endswith("Z") and lease["spec"]["acquireTime"] == lease["spec"]["renewTime"]
    a.stop()  # idempotent
    assert calls.count("stopped") == 1


# ------------------------------------------------------------------------------------------------
# two electors


def test_of_two_electors_one_leads_and_the_other_takes_over_when_it_stops(kube, replicas):
    a, a_calls = replicas.make("replica-a")
    assert a_calls.wait_count("started", 1)
    b, b_calls = replicas.make("replica-b")

    follower_states: list[tuple[bool, bool, int]] = []
    renewed = watch_renewals(kube, "replica-a", 2, lambda: follower_states.append(
        (a.is_leader, b.is_leader, b_calls.count("started"))))
    assert renewed == 2  # the leader renewed twice ...
    assert follower_states == [(True, False, 0)] * 2  # ... and meanwhile b followed
    assert holder(kube) == "replica-a"

    a.stop()
    assert not a.is_leader and a_calls.log == [("started", True), ("stopped", False)]
    assert b_calls.wait_count("started", 1)  # at once: a released the Lease
    assert b.is_leader and b_calls.log == [("started", True)]
    assert holder(kube) == "replica-b"
    assert not a.is_leader and a_calls.count("started") == 1  # a no longer takes part
    assert kube.count("create", path_regex="/leases$") == 1  # b took the existing Lease over


def test_a_standby_takes_over_at_once_when_the_leader_stops_and_releases_the_lease(kube, replicas, package_log):
    # A lease far longer than WAIT: b can lead within WAIT only because a released the Lease.
    timings = {"lease_duration": 60, "renew_deadline": 3, "retry_period": 1}
    made = []
    for identity in ("replica-a", "replica-b"):
        calls = Calls(replicas.cond)
        calls.elector = LeaderElector(kube.api_client(), namespace=NS, identity=identity,
                                      on_started=calls.started, on_stopped=calls.stopped, **timings)
        replicas.electors.append(calls.elector)
        made.append(calls)
    a_calls, b_calls = made
    a_calls.elector.start()
    assert a_calls.wait_count("started", 1)
    b_calls.elector.start()
    # b has seen a's Lease and waits for it to expire (60 s from now) ...
    assert package_log.wait_for("lease held by replica-a and has not expired", 1)
    a_calls.elector.stop()
    assert b_calls.wait_count("started", 1)  # ... but leads at once: a released it
    assert holder(kube) == "replica-b" and kube.leases(NS)[0]["spec"]["leaseDurationSeconds"] == 60


def test_a_stopping_elector_that_does_not_hold_the_lease_leaves_it_alone(kube, replicas, package_log):
    a, a_calls = replicas.make("replica-a")
    assert a_calls.wait_count("started", 1)
    b, _ = replicas.make("replica-b")
    assert package_log.wait_for("lease held by replica-a and has not expired", 1)
    b.stop()
    (lease,) = kube.leases(NS)
    assert lease["spec"]["holderIdentity"] == "replica-a" and lease["spec"]["leaseDurationSeconds"] == 2
    assert a.is_leader


def test_a_leader_whose_renewals_fail_stops_leading_and_leadership_comes_back(kube, replicas):
    a, a_calls = replicas.make("replica-a")
    assert a_calls.wait_count("started", 1)
    b, b_calls = replicas.make("replica-b")

    kube.inject(None, LEASE_PATH, 500, times=None)  # every GET and PUT of the Lease fails
    assert a_calls.wait_count("stopped", 1)
    assert not a.is_leader and a_calls.log == [("started", True), ("stopped", False)]
    assert not b.is_leader and b_calls.log == []  # nobody can take the Lease while it cannot be read

    kube.clear_faults()
    assert a_calls.wait(lambda: a_calls.count("started") + b_calls.count("started") == 2)
    leader, other = (a, b) if a.is_leader else (b, a)
    assert leader.is_leader and not other.is_leader
    assert holder(kube) == leader.identity
    assert a_calls.alternates() and b_calls.alternates()


def test_an_elector_that_loses_the_lease_to_another_holder_stops_leading(kube, replicas):
    """A leader that reads the Lease and finds another holder stops at once, and follows."""
    a, calls = replicas.make("replica-a")
    assert calls.wait_count("started", 1)
    with kube.api_client() as c:
        leases = client.CoordinationV1Api(c)
        lease = leases.read_namespaced_lease(LEASE, NS)
        lease.spec.holder_identity = "intruder"
        lease.spec.lease_duration_seconds = 3600
        lease.metadata.resource_version = None  # unconditional: a renewal may come in between
        leases.replace_namespaced_lease(LEASE, NS, lease)
    assert calls.wait_count("stopped", 1)
    assert not a.is_leader and calls.log == [("started", True), ("stopped", False)]


# ------------------------------------------------------------------------------------------------
# an unreachable API server


def test_an_unreachable_api_server_is_retried_until_it_answers(kube, replicas, election_log):
    api_client = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{closed_port()}"))
    a, calls = replicas.make("replica-a", api_client=api_client)
    assert election_log.wait_for("trying again in", 2)  # connection refused, twice: the thread lives on
    assert a._thread.is_alive() and not a.is_leader and calls.log == []

    api_client.configuration.host = kube.url  # the server is there now
    assert calls.wait_count("started", 1)
    assert a.is_leader and holder(kube) == "replica-a"


def test_stop_ends_an_elector_that_never_reached_the_api_server(replicas, election_log):
    api_client = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{closed_port()}"))
    a, calls = replicas.make("replica-a", api_client=api_client)
    assert election_log.wait_for("trying again in", 1)
    a.stop()
    assert not a._thread.is_alive()
    assert not a.is_leader and calls.log == []


def test_a_leader_cut_off_from_the_api_server_stops_leading_and_leads_again_when_it_is_back(
        kube, replicas, election_log):
    a, calls = replicas.make("replica-a")
    assert calls.wait_count("started", 1)
    kube.stop()  # connections refused: the error escapes LeaderElection.run()
    assert calls.wait_count("stopped", 1)
    assert not a.is_leader
    assert election_log.wait_for("trying again in", 2)
    assert a._thread.is_alive()

    kube.start()  # the same store, on another port
    a._leases._api.api_client.configuration.host = kube.url
    assert calls.wait_count("started", 2)
    assert a.is_leader and calls.alternates() and holder(kube) == "replica-a"


# ------------------------------------------------------------------------------------------------
# callbacks


def test_an_on_stopped_that_raises_does_not_end_the_election(kube, replicas):
    a, calls = replicas.make("replica-a")

    def failing_stop() -> None:
        calls.stopped()
        raise RuntimeError("boom")

    a._on_stopped = failing_stop
    assert calls.wait_count("started", 1)
    kube.inject(None, LEASE_PATH, 500, times=None)
    assert calls.wait_count("stopped", 1)
    kube.clear_faults()
    assert calls.wait_count("started", 2)
    assert a.is_leader and calls.alternates()


def test_an_on_started_that_raises_ends_the_term_and_the_elector_tries_again(kube, replicas):
    a, calls = replicas.make("replica-a", start=False)
    failing = threading.Event()
    failing.set()

    def started() -> None:
        calls.started()
        if failing.is_set():
            failing.clear()
            raise RuntimeError("cannot lead")

    a._on_started = started
    a.start()
    assert calls.wait_count("started", 2)  # the first term ended with on_stopped, a second one began
    assert a.is_leader
    assert calls.log == [("started", True), ("stopped", False), ("started", True)]


def test_stop_waits_for_a_running_on_started_before_calling_on_stopped(kube, replicas, election_log):
    a, calls = replicas.make("replica-a", start=False)
    entered, release = threading.Event(), threading.Event()

    def started() -> None:
        calls.started()
        entered.set()
        assert release.wait(WAIT)

    a._on_started = started
    a.start()
    assert entered.wait(WAIT) and a.is_leader
    stopper = threading.Thread(target=a.stop)
    stopper.start()
    assert election_log.wait_for("stopped leading (lease default/ollama-gitops): stopping", 1)
    assert not a.is_leader  # is_leader false at once ...
    assert calls.count("stopped") == 0  # ... on_stopped only once on_started has returned
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert calls.log == [("started", True), ("stopped", False)]


def test_stop_from_within_on_started(kube, replicas):
    a, calls = replicas.make("replica-a", start=False)
    returned = threading.Event()

    def started() -> None:
        calls.started()
        a.stop()  # neither deadlocks nor waits for the election thread, which is waiting for this
        returned.set()

    a._on_started = started
    a.start()
    assert returned.wait(WAIT)
    assert not a.is_leader and calls.log == [("started", True), ("stopped", False)]
    a._thread.join(WAIT)
    assert not a._thread.is_alive()


# ------------------------------------------------------------------------------------------------
# timings


@pytest.mark.parametrize("timings", [
    {"lease_duration": 2, "renew_deadline": 1.5, "retry_period": 0.5},  # retry under 1 s
    {"lease_duration": 2, "renew_deadline": 1.2, "retry_period": 1},  # renew not above 1.2 * retry
    {"lease_duration": 2, "renew_deadline": 2, "retry_period": 1},  # lease not above renew
    {"lease_duration": 2.5, "renew_deadline": 1.5, "retry_period": 1},  # lease not whole seconds
    {"lease_duration": 15, "renew_deadline": float("nan"), "retry_period": 2},
    {"lease_duration": "15", "renew_deadline": 10, "retry_period": 2},
])
def test_bad_timings_are_a_value_error_not_an_exit(timings):
    with pytest.raises(ValueError):
        validate_timings(**timings)
    with client.ApiClient(client.Configuration(host="http://127.0.0.1:1")) as c, pytest.raises(ValueError):
        LeaderElector(c, namespace=NS, identity="x", on_started=lambda: None, on_stopped=lambda: None, **timings)


def test_the_defaults_and_the_shortest_timings_are_accepted():
    validate_timings(15, 10.0, 2.0)
    validate_timings(**TIMINGS)
    with client.ApiClient(client.Configuration(host="http://127.0.0.1:1")) as c:
        elector = LeaderElector(c, namespace=NS, identity="x", on_started=lambda: None, on_stopped=lambda: None)
        assert (elector.lease_duration, elector.renew_deadline, elector.retry_period) == (15, 10.0, 2.0)
        with pytest.raises(ValueError):
            LeaderElector(c, namespace=NS, identity="", on_started=lambda: None, on_stopped=lambda: None)


# ------------------------------------------------------------------------------------------------
# what goes on the wire


def test_lease_times_at_a_whole_second_keep_six_fractional_digits(kube):
    # The package formats times with str(datetime), which drops the fraction at a whole second; a
    # real API server parses MicroTime as RFC3339Micro and answers 400 to "08:00:00+00:00".
    from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord

    from ollama_gitops.reconciler.cluster.election import _Lock, _Run, _TimedLeases

    with kube.api_client() as api_client:
        elector = LeaderElector(api_client, namespace=NS, identity="replica-a", on_started=lambda: None,
                                on_stopped=lambda: None, **TIMINGS)
        lock = _Lock(elector, _Run(1), _TimedLeases(api_client, 5))
        whole = "2026-12-01 08:00:00"  # str(datetime) at a whole second, as the package writes records
        assert lock.create(LEASE, NS, LeaderElectionRecord("replica-a", "2", whole, whole))
        assert lock.update(LEASE, NS, LeaderElectionRecord("replica-a", "2", whole, "2026-12-01 08:00:02"))
    (lease,) = kube.leases(NS)
    assert lease["spec"]["renewTime"].endswith(":02.000000Z") and lease["spec"]["acquireTime"].endswith(":00.000000Z")
