"""Errand."""
