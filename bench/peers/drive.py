"""The harness side of the no-op peers: fill their queue, start their workers, time them."""

import time
from dataclasses import dataclass

import dramatiq
import pika
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.infra import REDIS_URL, Resources
from bench.peers import marks
from bench.procs import Group, Proc, python_proc, wait_for


@dataclass
class PeerDrain:
    """How one peer drained its backlog."""

    count: int
    first: float
    last: float
    worker_started: float

    @property
    def seconds(self) -> float:
        """First task start to last task finish."""
        return max(self.last - self.first, 1e-9)


def _env(res: Resources, vhost: str, prefix: str) -> dict[str, str]:
    return {
        "PEER_AMQP_URL": res.amqp_url(vhost),
        "PEER_REDIS_URL": REDIS_URL,
        "PEER_REDIS_PREFIX": prefix,
    }


def fill_dramatiq(res: Resources, vhost: str, n: int) -> None:
    """Put ``n`` no-op messages on the Dramatiq peer's queue (and check they are there).

    Without per-message confirms (filling is not measured); the queue's depth is then
    checked, so a message lost on the way would stop the scenario rather than pass.
    """
    broker = RabbitmqBroker(url=res.amqp_url(vhost))
    try:
        broker.declare_queue(marks.QUEUE)
        for i in range(n):
            message: dramatiq.Message[None] = dramatiq.Message(
                queue_name=marks.QUEUE,
                actor_name="noop",
                args=(i,),
                kwargs={},
                options={},
            )
            broker.enqueue(message)
    finally:
        broker.close()
    wait_for(lambda: queue_depth(res, vhost, marks.QUEUE) >= n, 60, 0.2, what="the peer's queue")


def queue_depth(res: Resources, vhost: str, queue: str) -> int:
    """Ready messages in ``queue`` of ``vhost``."""
    conn = pika.BlockingConnection(pika.URLParameters(res.amqp_url(vhost)))
    try:
        frame = conn.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    finally:
        conn.close()


def start_dramatiq(res: Resources, g: Group, vhost: str, prefix: str) -> Proc:
    """``dramatiq bench.peers.dramatiq_noop`` with 2 processes x 8 threads (its defaults else)."""
    args = ["-m", "dramatiq", "bench.peers.dramatiq_noop", "--processes", "2", "--threads", "8"]
    return g.add(python_proc("dramatiq-peer", args, _env(res, vhost, prefix)))


def fill_celery(res: Resources, vhost: str, n: int) -> None:
    """Put ``n`` no-op tasks on the Celery peer's queue."""
    from bench.peers import celery_noop  # local: celery is in the bench group only

    app = celery_noop.make_app(res.amqp_url(vhost))
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task(celery_noop.TASK, args=(i,), producer=producer)
    app.close()


def start_celery(res: Resources, g: Group, vhost: str, prefix: str) -> Proc:
    """``celery worker`` with the prefork pool, concurrency 2 (its defaults else)."""
    args = [
        "-m",
        "celery",
        "-A",
        "bench.peers.celery_noop",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
    ]
    return g.add(python_proc("celery-peer", args, _env(res, vhost, prefix)))


def wait_drained(
    proc: Proc, prefix: str, n: int, timeout_s: float, stall_s: float = 30.0
) -> PeerDrain:
    """Wait until the peer has run ``n`` tasks (or time is up, or it stopped moving)."""
    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + timeout_s
    last, moved = -1, time.monotonic()
    try:
        while time.monotonic() < deadline:
            proc.check()
            count, _, _ = marks.read(client, prefix)
            if count >= n:
                break
            if count != last:
                last, moved = count, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                break
            time.sleep(0.1)
        count, first, last_at = marks.read(client, prefix)
        return PeerDrain(count, first or 0.0, last_at or 0.0, proc.started)
    finally:
        client.close()
