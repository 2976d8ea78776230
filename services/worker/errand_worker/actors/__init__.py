"""Dramatiq actors: thin adapters from broker messages to the step runner."""
