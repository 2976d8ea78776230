"""Entry module for the Dramatiq CLI (``dramatiq errand_worker.boot``).

Importing it reads the settings, builds the broker and declares the actors: the one
module of the worker with import-time side effects, as the Dramatiq CLI requires.
"""

import dramatiq

from errand_schema.db import create_db_engine
from errand_schema.logging import configure_logging
from errand_schema.redis_guard import guarded_redis
from errand_worker.broker import build_broker, setup_worker
from errand_worker.settings import get_settings, per_process

#: Seconds a Redis call of the worker may take before it fails.
REDIS_TIMEOUT_S = 5.0

settings = per_process(get_settings())
configure_logging(settings.log_level, json_lines=settings.log_json)
broker = build_broker(settings)
dramatiq.set_broker(broker)
runtime = setup_worker(
    settings,
    broker,
    # Each thread keeps one connection between its claims and completions and may take
    # a second for a transaction meanwhile; four more for the reconciler, its leader
    # lock, the lease heartbeat and the watchdog.
    create_db_engine(settings.database_url, pool_size=2 * settings.threads + 4),
    # Bounded: a Redis that stops answering must not hold a step (events, gates,
    # estimates) for longer than this; each of those gives up and goes on. After a
    # failure the client skips Redis for a moment (errand_schema.redis_guard): with a
    # silent Redis every step's hand-off otherwise waited this long for its events.
    guarded_redis(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)[0],
)
