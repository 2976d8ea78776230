"""What one client has been sent of one job: seq dedupe and progress coalescing.

A client's *lane* for a job remembers the last seq it was sent. Progress events spend
tokens of a bucket that refills at ``rate_hz`` up to ``burst``; a progress event that
finds the bucket empty is held (the newest replaces an older held one) until a token
is back. Any other event (a state change) is sent at once and supersedes a held
progress event, whose progress it carries anyway.

An event sent after skipped progress events carries ``prev_seq``: the seq of the
previous event this client was sent for the job. The seqs in between were progress
ticks the notifier saw and superseded, so the client need not ask for them again. When
the notifier itself saw a gap, ``prev_seq`` is left out and the client resubscribes.
"""

import enum
from dataclasses import dataclass
from typing import Any


class Verdict(enum.Enum):
    """What to do with one event for one client."""

    SEND = "send"
    HOLD = "hold"
    DROP = "drop"


@dataclass(frozen=True)
class LanePolicy:
    """The coalescing rate shared by every lane."""

    rate_hz: float
    burst: int


@dataclass(frozen=True)
class Decision:
    """The verdict on one event, the ``prev_seq`` to send with it, and how many held
    progress events it superseded."""

    verdict: Verdict
    prev_seq: int | None = None
    superseded: int = 0


_DROP = Decision(Verdict.DROP)


class JobLane:
    """Delivery state of one job for one client."""

    __slots__ = (
        "last_seen",
        "last_sent",
        "pending",
        "pending_seq",
        "policy",
        "refilled_at",
        "run_ok",
        "tokens",
    )

    def __init__(self, policy: LanePolicy, now: float) -> None:
        self.policy = policy
        self.tokens = float(policy.burst)
        self.refilled_at = now
        #: Highest seq sent to the client (or covered by its subscribe ack).
        self.last_sent = 0
        #: Highest seq offered for this client, sent or not.
        self.last_seen = 0
        #: Every seq offered since ``last_sent`` followed the one before it.
        self.run_ok = True
        #: The held progress event (client payload) and its seq.
        self.pending: dict[str, Any] | None = None
        self.pending_seq = 0

    def offer(self, seq: int, is_progress: bool, now: float, payload: dict[str, Any]) -> Decision:
        """Decide about one event for this client."""
        if seq <= self.last_sent or (is_progress and seq <= self.pending_seq):
            return _DROP  # a repeat, or older than what is held
        self.run_ok = self.run_ok and (self.last_seen == 0 or seq == self.last_seen + 1)
        self.last_seen = max(self.last_seen, seq)
        if is_progress:
            self._refill(now)
            if self.tokens < 1.0:
                superseded = 0 if self.pending is None else 1
                self.pending, self.pending_seq = payload, seq
                return Decision(Verdict.HOLD, superseded=superseded)
            self.tokens -= 1.0
        superseded = 1 if self.pending is not None and self.pending_seq < seq else 0
        return Decision(Verdict.SEND, self._mark_sent(seq), superseded)

    def take_due(self, now: float) -> tuple[dict[str, Any], int | None] | None:
        """Return the held progress event and its ``prev_seq`` once a token is back."""
        if self.pending is None:
            return None
        self._refill(now)
        if self.tokens < 1.0:
            return None
        self.tokens -= 1.0
        payload = self.pending
        return payload, self._mark_sent(self.pending_seq)

    def acked(self, seq: int) -> None:
        """A subscribe ack gave the client everything up to ``seq``."""
        if seq > self.last_sent:
            self.last_sent = seq
            self.run_ok = True
        self.last_seen = max(self.last_seen, seq)
        if self.pending is not None and self.pending_seq <= seq:
            self.pending, self.pending_seq = None, 0

    def seconds_until_token(self, now: float) -> float:
        """Return how long until a held event may be sent."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.policy.rate_hz)

    def _mark_sent(self, seq: int) -> int | None:
        contiguous_skip = self.last_sent and seq > self.last_sent + 1 and self.run_ok
        prev = self.last_sent if contiguous_skip else None
        self.last_sent = seq
        self.run_ok = True
        if self.pending is not None and self.pending_seq <= seq:
            self.pending, self.pending_seq = None, 0
        return prev

    def _refill(self, now: float) -> None:
        elapsed = now - self.refilled_at
        if elapsed > 0:
            burst = float(self.policy.burst)
            self.tokens = min(burst, self.tokens + elapsed * self.policy.rate_hz)
            self.refilled_at = now
