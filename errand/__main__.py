"""``python -m errand`` runs the CLI."""

from errand.cli import main

main()
