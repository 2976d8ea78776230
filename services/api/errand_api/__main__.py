"""``python -m errand_api`` runs the API."""

from errand_api.main import serve

serve()
