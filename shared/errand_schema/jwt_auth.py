"""JWT bearer tokens from a configured issuer, as an alternative to API keys.

A token is verified with a shared secret (HS256) or the issuer's JWKS (RS256/ES256),
must carry ``exp``, and must name the configured issuer (and audience, if set). Its
``sub`` identifies the user (``<issuer>|<sub>``, created on first sight); the claim
``errand_role: admin`` makes an admin.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from errand_schema.auth import Principal, authenticate
from errand_schema.models import User

logger = logging.getLogger(__name__)

#: The claim that carries the role.
ROLE_CLAIM = "errand_role"


@dataclass(frozen=True)
class JwtConfig:
    """How to verify tokens; ``None`` values are not checked."""

    issuer: str
    secret: str | None = None
    jwks_url: str | None = None
    audience: str | None = None


class JwtVerifier:
    """Verifies JWTs and maps them to users."""

    def __init__(self, config: JwtConfig) -> None:
        if not config.secret and not config.jwks_url:
            raise ValueError("a JWT issuer needs a shared secret or a JWKS URL")
        # Local: PyJWT and its cryptography backend (~9 MB resident) load only in a
        # process that has an issuer configured.
        import jwt

        self._config = config
        self._jwks = jwt.PyJWKClient(config.jwks_url) if config.jwks_url else None

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether ``token`` has the shape of a JWT (three dot-separated parts)."""
        return token.count(".") == 2

    def claims(self, token: str) -> dict[str, Any] | None:
        """Return the verified claims, or ``None`` for any invalid or expired token."""
        import jwt  # loaded by __init__ already: a dictionary lookup

        cfg = self._config
        try:
            if self._jwks is not None:
                key: Any = self._jwks.get_signing_key_from_jwt(token).key
                algorithms = ["RS256", "ES256"]
            else:
                key, algorithms = cfg.secret, ["HS256"]
            return dict(
                jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    issuer=cfg.issuer,
                    audience=cfg.audience,
                    options={
                        "require": ["exp", "sub", "iss"],
                        "verify_aud": cfg.audience is not None,
                    },
                )
            )
        except jwt.PyJWTError as exc:
            logger.info("JWT refused: %s", exc)
            return None

    def authenticate(self, session: Session, token: str) -> tuple[Principal, datetime] | None:
        """Return the caller and the token's expiry, or ``None``."""
        claims = self.claims(token)
        if claims is None:
            return None
        name = f"{claims['iss']}|{claims['sub']}"[:200]
        role = "admin" if claims.get(ROLE_CLAIM) == "admin" else "user"
        user = _find_or_create(session, name, role)
        if user is None or user.disabled_at is not None:
            return None
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return Principal(user_id=user.id, name=user.name, role=role), expires


def _find_or_create(session: Session, name: str, role: str) -> User | None:
    user = session.exec(select(User).where(User.name == name)).first()
    if user is not None:
        if user.role != role:
            user.role = role
            session.add(user)
        return user
    try:
        with session.begin_nested():
            user = User(name=name, role=role)
            session.add(user)
    except IntegrityError:
        return session.exec(select(User).where(User.name == name)).first()
    return user


def authenticate_token(
    session: Session, token: str, verifier: "JwtVerifier | None"
) -> tuple[Principal, datetime | None] | None:
    """Authenticate an API key, or a JWT when an issuer is configured.

    Returns:
        The caller and, for a JWT, when its token expires; ``None`` if refused.
    """
    if verifier is not None and JwtVerifier.looks_like_jwt(token):
        return verifier.authenticate(session, token)
    principal = authenticate(session, token)
    return (principal, None) if principal is not None else None
