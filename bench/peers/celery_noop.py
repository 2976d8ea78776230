"""Celery peer: a no-op task (``celery -A bench.peers.celery_noop worker``)."""

import os

from celery import Celery

from bench.peers.marks import QUEUE, mark

TASK = "bench.noop"


def make_app(broker_url: str) -> Celery:
    """A Celery app on ``broker_url`` whose tasks go to :data:`QUEUE`, results ignored."""
    celery = Celery("bench_noop", broker=broker_url)
    celery.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    return celery


app = make_app(os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    """Do nothing but count."""
    mark()
