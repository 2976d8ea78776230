"""API keys: making them, storing them hashed, and finding who a token belongs to.

A key looks like ``erk_<12 hex prefix>_<secret>``. Only the prefix (to find the row)
and a SHA-256 of the whole key are stored; keys carry 192 random bits, so a fast hash
is safe here (as for GitHub tokens), and a slow one would cost every request.
Foreign tokens, such as ``ERRAND_BOOTSTRAP_ADMIN_KEY``, are found by a prefix derived
from their hash.
"""

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from errand_schema.models import ApiKey, User, utcnow

#: Start of every key Errand makes.
KEY_SCHEME = "erk"
#: Name of the user that owns the bootstrap admin key.
BOOTSTRAP_ADMIN_NAME = "admin"
#: ``Session.info`` key holding the authenticated caller's :class:`CallerLimits`.
CALLER_KEY = "errand.caller"
#: ``last_used_at`` is written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class CallerLimits:
    """A user's own limits, as read when the caller was authenticated.

    Kept in the request's ``Session.info`` (:data:`CALLER_KEY`) and by the API's key
    cache: the rate limit and the in-flight cap of a submission are read from here
    rather than from a ``User`` row in the session (putting a cached row in the
    session cost a tenth of the API's CPU per submission, bench/README.md).
    """

    id: uuid.UUID
    rate_limit_per_s: float | None
    max_in_flight: int | None

    @classmethod
    def of(cls, user: User) -> "CallerLimits":
        """The limits of a ``users`` row."""
        return cls(user.id, user.rate_limit_per_s, user.max_in_flight)


def user_limits(session: Session, user_id: uuid.UUID) -> CallerLimits | None:
    """The user's limits: the caller's as authenticated for this session, else read."""
    caller = session.info.get(CALLER_KEY)
    if isinstance(caller, CallerLimits) and caller.id == user_id:
        return caller
    user = session.get(User, user_id)
    return CallerLimits.of(user) if user is not None else None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: uuid.UUID
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        """Whether the caller may act on every job and use admin endpoints."""
        return self.role == "admin"


def generate_key() -> str:
    """Return a new random API key."""
    return f"{KEY_SCHEME}_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"


def key_prefix(token: str) -> str:
    """Return the stored lookup prefix of a token."""
    parts = token.split("_")
    if len(parts) == 3 and parts[0] == KEY_SCHEME and len(parts[1]) == 12:
        return parts[1]
    return "h_" + hashlib.sha256(token.encode()).hexdigest()[:24]


def hash_key(token: str) -> str:
    """Return the stored hash of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, *, role: str = "user") -> tuple[User, str]:
    """Create a user with one API key.

    Returns:
        The user and its key in clear; the key is never shown again.
    """
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user, add_key(session, user)


def add_key(
    session: Session, user: User, *, token: str | None = None, name: str = "default"
) -> str:
    """Give ``user`` a new API key (or store ``token`` as one) and return it in clear."""
    token = token or generate_key()
    session.add(
        ApiKey(user_id=user.id, prefix=key_prefix(token), secret_hash=hash_key(token), name=name)
    )
    return token


def ensure_bootstrap_admin(session: Session, token: str) -> None:
    """Make sure ``token`` is a valid admin key (idempotent, safe to race).

    Args:
        session: A session; committed here.
        token: The value of ``ERRAND_BOOTSTRAP_ADMIN_KEY``.
    """
    prefix = key_prefix(token)
    if session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first() is not None:
        return
    try:
        user = session.exec(select(User).where(User.name == BOOTSTRAP_ADMIN_NAME)).first()
        if user is None:
            user = User(name=BOOTSTRAP_ADMIN_NAME, role="admin")
            session.add(user)
            session.flush()
        add_key(session, user, token=token, name="bootstrap")
        session.commit()
    except IntegrityError:
        # Another service (api and notifier start together) inserted it first.
        session.rollback()


def authenticate(session: Session, token: str) -> Principal | None:
    """Return the caller that ``token`` identifies, or ``None``.

    Revoked keys and disabled users are refused. Updates ``last_used_at`` at most once
    per :data:`LAST_USED_RESOLUTION` (the caller commits).
    """
    if not token:
        return None
    row = session.exec(
        select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)  # type: ignore[arg-type]
        .where(ApiKey.prefix == key_prefix(token))
    ).first()
    if row is None:
        return None
    key, user = row
    if not hmac.compare_digest(key.secret_hash, hash_key(token)):
        return None
    if key.revoked_at is not None or user.disabled_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.add(key)
    # The request's later reads of the caller's limits are answered without a query.
    session.info[CALLER_KEY] = CallerLimits.of(user)
    return Principal(user_id=user.id, name=user.name, role=user.role)
