"""Leader election among the replicas of the reconciler in Kubernetes mode.

Only the leader may apply. The election runs on a ``coordination.k8s.io/v1`` Lease with the
official ``kubernetes.leaderelection`` package; `LeaderElector` wraps it to make up for what the
package leaves out:

- ``LeaderElection.run()`` blocks, returns after one lost term and cannot be stopped, and anything
  but an ``ApiException`` (a refused connection, a timeout) escapes it. The elector runs it in a
  daemon thread, over and over, for as long as the process lives: after an error or a lost term it
  waits ``retry_period`` (on an Event, so `LeaderElector.stop` interrupts the wait) and takes part
  again. To stop a run the package cannot stop, the lock raises a private exception on its next
  call, which happens at the latest one ``retry_period`` later.
- ``LeaseLock`` ignores the caller's ApiClient: the elector gives it one on the given client, whose
  requests time out after ``renew_deadline`` (a request that never returns would keep a leader
  from ever noticing that it no longer renews).
- The package decides that renewing has failed only between attempts, late (up to about
  ``renew_deadline + retry_period`` after the last renewal, beyond ``lease_duration`` with the
  shortest timings) or never (a request that hangs). The elector keeps its own deadline: a term
  ends when no write of the Lease sent in the last ``renew_deadline`` seconds succeeded, which is
  before any follower can take over (``lease_duration`` after it saw the last renewal). A term
  also ends at once when a read of the Lease shows another holder.
- ``onstarted_leading`` runs in a thread of its own, possibly after the term has already ended;
  ``onstopped_leading`` is called only when ``run()`` returns. The elector turns these into one
  ``on_started`` and one ``on_stopped`` per term, in that order, with `LeaderElector.is_leader` true
  only in between.

- The package cannot release the Lease. `LeaderElector.stop` does, as client-go's ``release()``
  does: if the Lease still names this replica, it is written with no holder, a
  ``leaseDurationSeconds`` of 1 and both times set to now, so a standby (this package takes a
  Lease without a holder at once; client-go does too) leads at its next attempt instead of
  ``lease_duration`` seconds after the last renewal.
"""

from __future__ import annotations

import functools
import logging
import numbers
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

__all__ = ["LeaderElector", "validate_timings"]

log = logging.getLogger("ollama_gitops.cluster.election")

JITTER_FACTOR = 1.2  # electionconfig.Config: renew_deadline must exceed retry_period times this
_STOPPING = "stopping"


def validate_timings(lease_duration: Any, renew_deadline: Any, retry_period: Any) -> None:
    """Raise ValueError unless the timings are ones ``electionconfig.Config`` accepts (it would
    call ``sys.exit`` instead) and ``LeaseLock`` can store (a whole number of seconds)."""
    for label, value in (("lease_duration", lease_duration), ("renew_deadline", renew_deadline),
                         ("retry_period", retry_period)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{label} must be a number of seconds, not {value!r}")
    if not isinstance(lease_duration, numbers.Integral):
        raise ValueError(f"lease_duration must be a whole number of seconds, not {lease_duration!r}")
    if not retry_period >= 1:  # also false for NaN
        raise ValueError(f"retry_period must be at least 1 second, not {retry_period!r}")
    if not renew_deadline > JITTER_FACTOR * retry_period:
        raise ValueError(f"renew_deadline ({renew_deadline!r}) must be greater than "
                         f"{JITTER_FACTOR} * retry_period ({retry_period!r})")
    if not lease_duration > renew_deadline:
        raise ValueError(f"lease_duration ({lease_duration!r}) must be greater than "
                         f"renew_deadline ({renew_deadline!r})")


class _Abandoned(Exception):
    """Raised by the lock into the package's loops to end a run that the package cannot stop."""


class _Run:
    """One pass through ``LeaderElection.run()``: at most one term, since run() returns after it.
    Fields are guarded by the elector's condition, except where said."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.abandoned = False  # the lock raises _Abandoned on its next call
        self.leading = False  # the Lease was acquired: a term is on until `ended`
        self.ended = False
        self.started = False  # on_started was called (so on_stopped will be)
        self.written_at = 0.0  # time.monotonic() when the last successful write of the Lease was sent
        self.done = threading.Event()  # ended, and on_stopped (if due) has returned (not guarded)


class _TimedLeases:
    """The three Lease calls of ``LeaseLock`` on the given client, each with a request timeout."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float) -> None:
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._timeout = timeout

    def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        return self._api.read_namespaced_lease(*args, _request_timeout=self._timeout, **kwargs)

    def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        return self._api.create_namespaced_lease(*args, _request_timeout=self._timeout, **kwargs)

    def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        return self._api.replace_namespaced_lease(*args, _request_timeout=self._timeout, **kwargs)


class MicroTime(datetime):
    """A datetime that the client serialises as a real API server parses ``metav1.MicroTime``:
    RFC3339Micro, six fractional digits always. (The client calls ``isoformat()``, which drops the
    fraction at a whole second, and the server then answers 400.) The client's models keep the
    subclass, so it reaches the wire as is."""

    def isoformat(self, sep: str = "T", timespec: str = "microseconds") -> str:
        return super().isoformat(sep, timespec)

    @classmethod
    def of(cls, moment: datetime) -> "MicroTime":
        """`moment` (aware) as a MicroTime in UTC."""
        utc = moment.astimezone(timezone.utc)
        return cls(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, timezone.utc)


class _Lock(LeaseLock):
    """A LeaseLock on our client that reports successful writes and other holders to the elector,
    and raises _Abandoned once its run is given up."""

    def __init__(self, elector: "LeaderElector", run: _Run, leases: _TimedLeases) -> None:
        super().__init__(elector.name, elector.namespace, elector.identity)
        self.api_instance = leases
        self._elector = elector
        self._run = run

    def time_str_to_iso(self, str_time):  # noqa: ANN001, ANN201 - the package's signature
        return MicroTime.of(super().time_str_to_iso(str_time))

    def get(self, name, namespace):  # noqa: ANN001 - the package's signature
        self._elector._check(self._run)
        found, record = super().get(name, namespace)
        self._elector._check(self._run)
        if found and record.holder_identity and record.holder_identity != self.identity:
            self._elector._held_by(self._run, record.holder_identity)
        return found, record

    def create(self, name, namespace, election_record):  # noqa: ANN001
        self._elector._check(self._run)
        sent = time.monotonic()
        created = super().create(name, namespace, election_record)
        if created:
            self._elector._written(self._run, sent)
        return created

    def update(self, name, namespace, updated_record):  # noqa: ANN001
        self._elector._check(self._run)
        sent = time.monotonic()
        updated = super().update(name, namespace, updated_record)
        if updated:
            self._elector._written(self._run, sent)
        return updated


class _Election(leaderelection.LeaderElection):
    """The package's election, telling the elector when the Lease is acquired (in the run's own
    thread, before the package starts the thread that calls onstarted_leading)."""

    def __init__(self, config: electionconfig.Config, elector: "LeaderElector", run: _Run) -> None:
        super().__init__(config)
        self._elector = elector
        self._run = run

    def acquire(self) -> bool:
        acquired = super().acquire()
        if acquired:
            self._elector._begin_term(self._run)
        return acquired


class LeaderElector:
    """Runs the election in a background thread for as long as the process lives, re-entering it after
    losing leadership; tells the caller when this replica starts and stops leading.

    :param api_client: the client for the Lease (the package's own lock would use the default one).
    :param namespace: namespace of the Lease.
    :param name: name of the Lease.
    :param identity: this replica's name in the Lease (``holderIdentity``), unique among the
        replicas (the caller's default: hostname and pid).
    :param lease_duration: seconds a follower waits, after it last saw the Lease change, before it
        takes over; a whole number.
    :param renew_deadline: seconds the leader may go without renewing before it stops leading; also
        the timeout of each request. Must be less than `lease_duration`.
    :param retry_period: seconds between attempts to acquire or renew, and the wait after an error;
        at least 1, and `renew_deadline` must exceed 1.2 times it.
    :param on_started: called once at the start of each term, in a thread of its own (the package's),
        with `is_leader` already true. (A term that ends before that thread runs is no term for the
        caller: neither callback is called and `is_leader` never becomes true.)
    :param on_stopped: called once at the end of each term whose on_started was called, after
        `is_leader` became false; from the election thread, the deadline thread or `stop`.

    The callbacks never run at the same time, and always in the order started, stopped, started,
    ...: on_stopped waits for on_started to return, and the next term does not begin before
    on_stopped has returned. So they should only note the change (set or clear an Event, wake a
    loop) and return; `stop` too waits for them (unless called from one of them). If on_started
    raises, the term ends at once (on_stopped is called, the package stops renewing, and the elector
    takes part again); what on_stopped raises is logged and ignored.

    :raises ValueError: on timings the package would refuse (it would call ``sys.exit``).
    """

    def __init__(self, api_client: kubernetes.client.ApiClient, *, namespace: str, name: str = "ollama-gitops",
                 identity: str, lease_duration: int = 15, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        validate_timings(lease_duration, renew_deadline, retry_period)
        for label, value in (("namespace", namespace), ("name", name), ("identity", identity)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{label} must be a non-empty string, not {value!r}")
        if not callable(on_started) or not callable(on_stopped):
            raise ValueError("on_started and on_stopped must be callable")
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = int(lease_duration)
        self.renew_deadline = float(renew_deadline)
        self.retry_period = float(retry_period)
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._leases = _TimedLeases(api_client, self.renew_deadline)

        self._cond = threading.Condition()  # guards the _Run fields, _run, _leader and _runs
        self._callbacks = threading.RLock()  # held while a callback runs (reentrant: stop() from one)
        self._in_callback = threading.local()
        self._run: _Run | None = None  # the current pass through LeaderElection.run()
        self._leader: _Run | None = None  # the run whose term is on and whose on_started was called
        self._runs = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public ----------------------------------------------------------------------------------

    def start(self) -> "LeaderElector":
        """Start taking part in the election (once). Returns self."""
        with self._cond:
            if self._thread is not None or self._stopping.is_set():
                raise RuntimeError("a LeaderElector can be started once")
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"leader-election {self.namespace}/{self.name}")
        self._thread.start()
        return self

    @property
    def is_leader(self) -> bool:
        """True only between on_started and on_stopped; false before on_stopped is called."""
        with self._cond:
            return self._leader is not None

    def stop(self) -> None:
        """Stop taking part. A leader stops leading at once (`is_leader` false, then on_stopped called,
        here), then the Lease is released if it still names this replica. Waits a bounded time for
        the election thread to end: it ends at the package's next call to the lock, at the latest
        about `retry_period` later (or when a request under way times out)."""
        first = not self._stopping.is_set()
        self._stopping.set()
        with self._cond:
            run = self._run
            self._cond.notify_all()
        if run is not None:
            self._end_term(run, _STOPPING)
        if first and self._thread is not None:
            # The lock refuses every call from now on, so the package sends nothing more; a write of
            # its already under way carries an older resourceVersion than the one read here, and one
            # of the two is refused with 409 (then the release reads again).
            self._release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and not self._calling_back():
            thread.join(self.retry_period + self.renew_deadline + 1.0)
            if thread.is_alive():
                log.warning("leader election thread for lease %s/%s has not ended yet; it ends at its next "
                            "request", self.namespace, self.name)

    def _release(self, attempts: int = 3) -> None:
        """client-go's ``release()``: give the Lease up if it names this replica (best effort)."""
        for _ in range(attempts):
            try:
                lease = self._leases.read_namespaced_lease(self.name, self.namespace)
                spec = lease.spec
                if spec is None or spec.holder_identity != self.identity:
                    return  # not ours (any more): nothing to give up
                now = MicroTime.of(datetime.now(timezone.utc))
                lease.spec = kubernetes.client.V1LeaseSpec(
                    holder_identity="", lease_duration_seconds=1, acquire_time=now, renew_time=now,
                    lease_transitions=spec.lease_transitions)
                self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
            except ApiException as exc:
                if exc.status == 409:
                    continue  # changed between our read and write (a renewal already under way)
                log.warning("could not release lease %s/%s: HTTP %s %s", self.namespace, self.name,
                            exc.status, exc.reason)
                return
            except Exception as exc:  # noqa: BLE001 - unreachable: it expires on its own
                log.warning("could not release lease %s/%s (%s: %s); it expires in %ds", self.namespace,
                            self.name, type(exc).__name__, exc, self.lease_duration)
                return
            log.info("%s released lease %s/%s", self.identity, self.namespace, self.name)
            return

    # -- the election thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                self._runs += 1
                run = self._run = _Run(self._runs)
            reason = "renewing the lease failed"
            try:
                config = electionconfig.Config(
                    _Lock(self, run, self._leases), lease_duration=self.lease_duration,
                    renew_deadline=self.renew_deadline, retry_period=self.retry_period,
                    onstarted_leading=functools.partial(self._started, run),
                    onstopped_leading=functools.partial(self._end_term, run, reason))
                _Election(config, self, run).run()
            except _Abandoned:
                pass
            except Exception as exc:  # noqa: BLE001 - a refused connection, a timeout: try again
                reason = f"leader election failed ({type(exc).__name__})"
                log.warning("leader election on lease %s/%s failed (%s: %s); trying again in %gs", self.namespace,
                            self.name, type(exc).__name__, exc, self.retry_period)
            finally:
                self._end_term(run, reason)
            run.done.wait()  # on_stopped may be running in another thread: the next term comes after it
            self._stopping.wait(self.retry_period)
        log.debug("leader election for lease %s/%s ended", self.namespace, self.name)

    # -- called by the lock, the election and the package ----------------------------------------

    def _calling_back(self) -> bool:
        return getattr(self._in_callback, "depth", 0) > 0

    def _call(self, callback: Callable[[], None]) -> None:
        self._in_callback.depth = getattr(self._in_callback, "depth", 0) + 1
        try:
            callback()
        finally:
            self._in_callback.depth -= 1

    def _check(self, run: _Run) -> None:
        if run.abandoned or self._stopping.is_set():
            raise _Abandoned()

    def _written(self, run: _Run, sent: float) -> None:
        with self._cond:
            run.written_at = max(run.written_at, sent)

    def _held_by(self, run: _Run, holder: str) -> None:
        """A read of the Lease shows another holder: a term of ours is over."""
        with self._cond:
            leading = run.leading and not run.ended
        if leading:
            self._end_term(run, f"the lease is held by {holder}")
            raise _Abandoned()

    def _begin_term(self, run: _Run) -> None:
        with self._cond:
            if run.abandoned or self._stopping.is_set():
                raise _Abandoned()
            run.leading = True
        log.info("%s acquired lease %s/%s", self.identity, self.namespace, self.name)
        threading.Thread(target=self._watch_deadline, args=(run,), daemon=True,
                         name=f"leader-election deadline {self.namespace}/{self.name}").start()

    def _started(self, run: _Run) -> None:
        """onstarted_leading, in the package's thread: begins the term for the caller unless it is
        already over."""
        with self._callbacks:
            with self._cond:
                if run.ended or not run.leading or self._stopping.is_set():
                    return
                run.started = True
                self._leader = run
            log.info("%s started leading (lease %s/%s)", self.identity, self.namespace, self.name)
            try:
                self._call(self._on_started)
            except Exception as exc:
                # the package logs it and stops renewing at its next round; the term ends now
                self._end_term(run, f"on_started raised {type(exc).__name__}: {exc}")
                raise

    def _watch_deadline(self, run: _Run) -> None:
        """Ends the term when no write of the Lease sent within renew_deadline has succeeded."""
        with self._cond:
            while True:
                if run.ended or self._stopping.is_set():
                    return
                remaining = run.written_at + self.renew_deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        self._end_term(run, f"the lease was not renewed within {self.renew_deadline:g}s")

    def _end_term(self, run: _Run, reason: str) -> None:
        """End `run` (its lock raises from now on) and its term if one is on: is_leader becomes
        false, then on_stopped is called if on_started was. Idempotent."""
        with self._cond:
            run.abandoned = True
            if run.ended:
                return
            run.ended = True
            leading = run.leading
            if self._leader is run:
                self._leader = None
            self._cond.notify_all()
        try:
            if not leading:
                return
            log.log(logging.INFO if reason == _STOPPING else logging.WARNING,
                    "%s stopped leading (lease %s/%s): %s", self.identity, self.namespace, self.name, reason)
            with self._callbacks:  # after on_started has returned
                if run.started:
                    try:
                        self._call(self._on_stopped)
                    except Exception:  # noqa: BLE001
                        log.exception("on_stopped raised")
        finally:
            run.done.set()
