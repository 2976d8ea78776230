"""``python -m errand_worker`` runs worker processes under the Dramatiq CLI."""

from errand_worker.main import run

run()
