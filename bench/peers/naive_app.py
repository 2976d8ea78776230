"""The naive peer of ``POST /v1/jobs``: insert a row with psycopg, publish with Dramatiq.

Run: ``uvicorn bench.peers.naive_app:app`` with NAIVE_DSN, NAIVE_AMQP_URL, NAIVE_TOKEN.
"""

import os
import queue
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi import FastAPI, Header, HTTPException
from psycopg.types.json import Jsonb
from pydantic import BaseModel

DSN, TOKEN = os.environ["NAIVE_DSN"], os.environ["NAIVE_TOKEN"]
dramatiq.set_broker(RabbitmqBroker(url=os.environ["NAIVE_AMQP_URL"], confirm_delivery=True))
_pool: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
for _ in range(20):  # like the Errand API's pool_size; the server allows 100 in all
    _pool.put(psycopg.connect(DSN))
with psycopg.connect(DSN, autocommit=True) as setup:
    setup.execute(
        "CREATE TABLE IF NOT EXISTS naive_jobs (id uuid PRIMARY KEY, type text NOT NULL,"
        " payload jsonb NOT NULL, status text NOT NULL, created_at timestamptz DEFAULT now())"
    )


@dramatiq.actor(queue_name="naive")
def run_job(job_id: str) -> None:
    """The job's actor (nothing consumes it during the benchmark)."""


class JobIn(BaseModel):
    type: str
    payload: dict[str, Any] = {}


@contextmanager
def _conn() -> Iterator[psycopg.Connection[Any]]:
    conn = _pool.get()
    try:
        yield conn
    finally:
        _pool.put(conn)


app = FastAPI()


@app.post("/v1/jobs", status_code=202)
def submit(job: JobIn, authorization: str = Header("")) -> dict[str, str]:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401)
    job_id = str(uuid.uuid4())
    with _conn() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO naive_jobs (id, type, payload, status) VALUES (%s, %s, %s, 'queued')",
            (job_id, job.type, Jsonb(job.payload)),
        )
    run_job.send(job_id)
    return {"id": job_id, "type": job.type, "status": "queued"}
