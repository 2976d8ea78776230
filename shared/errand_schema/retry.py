"""Retry policies: how long to wait before the next attempt of a failed step."""

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Longest delay a policy may ask for. Broker-side delays must stay well below
#: RabbitMQ's ``consumer_timeout`` (30 min by default).
MAX_RETRY_DELAY_S = 600.0


class RetryPolicy(BaseModel):
    """A retry strategy.

    * ``exponential``: ``min(cap, base * factor ** (n - 1))``, with full jitter
      (a uniform draw from 0 to that) when ``jitter`` is set.
    * ``linear``: ``min(cap, base * n)``.
    * ``fixed``: ``base`` every time.
    * ``none``: never retry.

    ``n`` is the number of the attempt that just failed (1 for the first).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["exponential", "linear", "fixed", "none"] = "exponential"
    base_s: float = Field(default=1.0, ge=0, le=MAX_RETRY_DELAY_S)
    factor: float = Field(default=2.0, ge=1, le=10)
    cap_s: float = Field(default=300.0, ge=0, le=MAX_RETRY_DELAY_S)
    jitter: bool = True

    def delay_s(self, failed_attempt: int, rng: random.Random | None = None) -> float | None:
        """Return the delay before the next attempt, or ``None`` for no retry."""
        n = max(1, failed_attempt)
        if self.strategy == "none":
            return None
        if self.strategy == "fixed":
            return min(self.base_s, self.cap_s)
        if self.strategy == "linear":
            return min(self.cap_s, self.base_s * n)
        ceiling = min(self.cap_s, self.base_s * self.factor ** (n - 1))
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0, ceiling)
