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
#: ``Session.info`` key holding the authenticated caller's ``User`` row.
CALLER_KEY = "errand.caller"
#: ``last_used_at`` is written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)


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
    # The session's identity map holds rows weakly: keep the caller's, so the request's
    # later reads of it (rate limit, in-flight cap) are answered without a query.
    session.info[CALLER_KEY] = user
    return Principal(user_id=user.id, name=user.name, role=user.role)
