"""An in-process event bus: what changed (models, cycles, servers), for live pages and `status --watch`.

Publishing never blocks and never fails the publisher: the reconciler's cycle and pull threads
publish, and a page that reads slowly must never slow them. Each subscriber has its own bounded
queue; a subscriber whose queue is full is dropped (its next read says so) rather than waited for,
and comes back with the id of the last event it saw. The bus keeps the last events in a ring so that
such a resume replays what was missed; when the gap is older than the ring (or the id is of another
process's bus), the subscriber is told to start again from a full read (`reset`).

Event ids are `EPOCH-SEQ`: the bus's start (so that an id from an earlier process is recognised)
and a sequence number.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_SIZE = 1024  # events a subscriber may be behind before it is dropped
RING_SIZE = 4096  # events kept for resumes

# Event types.
MODELS = "models"  # data: {"items": [model view, ...]}: these models changed (state, progress...)
REMOVED = "removed"  # data: {"items": [{"namespace", "name"}, ...]}: these models are gone
CYCLE_STARTED = "cycle-started"  # data: {"time"}
CYCLE_ENDED = "cycle-ended"  # data: {"time", "outcome", "commit", "message", "durationSeconds", "noop"}
STATUS = "status"  # data: the sync summary as GET /api/v1/status answers it
SERVERS = "servers"  # data: {"items": [server view, ...]}: reachability changed
RESET = "reset"  # data: {}: the subscriber missed events; read everything again


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: Mapping[str, Any]


class Dropped(Exception):
    """The subscriber fell too far behind (or the bus closed) and was let go."""


class Subscription:
    """One reader's queue. Iterate with `next(timeout)`; `close()` when done."""

    def __init__(self, bus: EventBus, backlog: Iterable[Event], size: int) -> None:
        self._bus = bus
        self._queue: deque[Event] = deque(backlog)
        self._size = size
        self._ready = threading.Condition(threading.Lock())
        self.dropped = False
        self.start_id = ""  # the id of the newest event when it subscribed

    def _offer(self, event: Event) -> bool:
        """Called by the bus under its lock; False when the queue is full (the subscriber is dropped)."""
        with self._ready:
            if len(self._queue) >= self._size:
                self.dropped = True
                self._ready.notify_all()
                return False
            self._queue.append(event)
            self._ready.notify()
            return True

    def _drop(self) -> None:
        with self._ready:
            self.dropped = True
            self._ready.notify_all()

    def next(self, timeout: float) -> Event | None:
        """The next event, or None after `timeout` seconds without one; raises Dropped when let go
        (after the events queued before it were read)."""
        with self._ready:
            if not self._queue and not self.dropped:
                self._ready.wait(timeout)
            if self._queue:
                return self._queue.popleft()
            if self.dropped:
                raise Dropped()
            return None

    def close(self) -> None:
        self._bus._unsubscribe(self)


class EventBus:
    """Publish events to every subscriber's bounded queue, keeping a ring of recent ones for resumes."""

    def __init__(self, *, queue_size: int = QUEUE_SIZE, ring_size: int = RING_SIZE) -> None:
        self.epoch = f"{int(time.time() * 1000):x}"
        self._seq = 0  # of the last event published
        self._lock = threading.Lock()
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size
        self._closed = False

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, type: str, data: Mapping[str, Any]) -> Event:
        """Send an event to every subscriber; drops those whose queue is full. Never blocks for long."""
        with self._lock:
            self._seq += 1
            event = Event(f"{self.epoch}-{self._seq}", type, data)
            self._ring.append(event)
            full = [s for s in self._subscribers if not s._offer(event)]
            for subscriber in full:
                self._subscribers.discard(subscriber)
        return event

    def subscribe(self, last_event_id: str | None = None) -> Subscription:
        """A new subscription. With the id of the last event a reader saw, the events after it are
        queued first; when they are no longer known, a `reset` event is."""
        with self._lock:
            backlog = self._backlog(last_event_id)
            subscription = Subscription(self, backlog, self._queue_size + len(backlog))
            subscription.start_id = f"{self.epoch}-{self._seq}"
            if self._closed:
                subscription._drop()
            else:
                self._subscribers.add(subscription)
            return subscription

    def close(self) -> None:
        """Let every subscriber go (at shutdown: streams end instead of holding the server)."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, set()
        for subscriber in subscribers:
            subscriber._drop()

    def _backlog(self, last_event_id: str | None) -> list[Event]:
        if not last_event_id:
            return []
        epoch, _, seq_text = last_event_id.strip().partition("-")
        try:
            seq = int(seq_text)
        except ValueError:
            seq = -1
        if epoch != self.epoch or seq < 0:
            return [self._reset()]
        if not self._ring or seq >= _seq_of(self._ring[-1]):
            return []
        if seq < _seq_of(self._ring[0]) - 1:
            return [self._reset()]
        return [e for e in self._ring if _seq_of(e) > seq]

    def _reset(self) -> Event:
        # Not in the ring: it is this subscriber's alone. Its id is the newest, so a resume from it
        # replays only what comes after.
        return Event(f"{self.epoch}-{self._seq}", RESET, {})

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)


def _seq_of(event: Event) -> int:
    return int(event.id.rpartition("-")[2])
