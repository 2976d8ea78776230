"""Notifier settings (``ERRAND_*`` environment variables)."""

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from errand_schema.settings import CommonSettings, split_commas


class NotifierSettings(CommonSettings):
    """Settings of ``errand notifier``.

    Note:
        Connection caps are per replica: a replica that is full refuses new clients
        (``server_full``) so a load balancer or the client tries another one.
    """

    host: str = "127.0.0.1"
    port: int = 8001
    #: Origins allowed to open Socket.IO connections (comma-separated; ``*`` for any).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    #: Most missed events returned in one subscribe ack.
    max_replay: int = Field(default=1000, ge=1)
    #: How long one blocking read of the event stream waits, in ms.
    stream_block_ms: int = Field(default=1000, ge=1)
    #: Seconds a Redis command may take beyond a blocking read's own wait (and to
    #: connect) before it is given up on: a Redis that stops answering is then seen as
    #: down, and clients catch up from PostgreSQL. (redis-py's own default, 5 s in all,
    #: would time out every quiet read with a ``stream_block_ms`` of 5,000 or more.)
    redis_timeout_s: float = Field(default=5.0, gt=0)
    #: Engine.IO ping interval and how long a client may take to answer, in seconds.
    ping_interval_s: float = Field(default=25.0, gt=0)
    ping_timeout_s: float = Field(default=20.0, gt=0)
    #: Open connections this replica accepts (``server_full`` past it).
    max_connections: int = Field(default=20_000, ge=1)
    #: Open connections one user may hold on this replica (``too_many_connections``);
    #: admins (dashboards, operators' tools) are not limited.
    max_connections_per_user: int = Field(default=100, ge=1)
    #: Progress events per job sent to one client per second; faster ticks are
    #: coalesced (the latest wins). State changes are never held back.
    progress_rate_hz: float = Field(default=10.0, gt=0)
    #: Progress events per job a client may get in a burst above that rate.
    progress_burst: int = Field(default=10, ge=1)
    #: Packets waiting to be written to one client before it is disconnected as a
    #: slow consumer (``slow_consumer``).
    client_buffer_max_packets: int = Field(default=500, ge=10)
    #: Period of the ``queue_stats`` tick sent to the ``admin`` room, in seconds.
    admin_stats_interval_s: float = Field(default=1.0, gt=0)
    #: ``user_stats`` (running jobs of a user) is sent at most this often per user.
    user_stats_interval_s: float = Field(default=0.5, gt=0)
    #: Completions of one user's jobs are sent as one ``jobs_summary`` per window of
    #: this many seconds, opened by the first of them; failures and cancellations are
    #: sent at once.
    summary_window_s: float = Field(default=2.0, gt=0)
    #: While the event stream is unreadable, subscribed jobs are caught up from
    #: PostgreSQL this often, in seconds.
    resync_interval_s: float = Field(default=1.0, gt=0)
    #: While the stream is healthy, subscribed jobs are still compared with PostgreSQL
    #: this often (seconds; 0 turns it off): a safety net for events that never reached
    #: the stream although Redis stayed readable.
    resync_sweep_s: float = Field(default=5.0, ge=0)
    #: On shutdown, clients are told to reconnect elsewhere and disconnected over this
    #: many seconds (spread, so the other replicas are not hit all at once).
    shutdown_drain_s: float = Field(default=2.0, ge=0)

    #: Every this many seconds the notifier collects garbage and freezes the survivors
    #: (``gc.freeze``), so that CPython's full collections do not walk every connected
    #: client's objects while events wait (0: leave the collector to CPython).
    gc_freeze_interval_s: float = Field(default=0.5, ge=0)
    #: Frozen objects get a full collection at least this often (seconds), and whenever
    #: a quarter of the clients have left since the last one.
    gc_full_every_s: float = Field(default=900.0, gt=0)

    _split = field_validator("cors_origins", mode="before")(split_commas)


@lru_cache
def get_settings() -> NotifierSettings:
    """Return the process's settings, read once from the environment."""
    return NotifierSettings()
