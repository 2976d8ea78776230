"""Notifier errors."""


class NotifierError(Exception):
    """Base of the notifier's own errors."""


class InvalidSubscription(NotifierError):
    """A ``subscribe`` request that is malformed."""
