"""``python -m errand_notifier`` runs the notifier."""

from errand_notifier.main import serve

serve()
