"""Raw Dramatiq peer: a no-op actor (``dramatiq bench.peers.dramatiq_noop``)."""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers.marks import QUEUE, mark

dramatiq.set_broker(RabbitmqBroker(url=os.environ["PEER_AMQP_URL"], confirm_delivery=True))


@dramatiq.actor(queue_name=QUEUE, actor_name="noop", max_retries=0)
def noop(i: int) -> None:
    """Do nothing but count."""
    mark()
