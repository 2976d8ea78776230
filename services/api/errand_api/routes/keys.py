"""API keys and users: ``/v1/keys`` (your own keys) and ``/v1/admin/users`` (admins)."""

import uuid

from fastapi import APIRouter, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from errand_api.authcache import bump_epoch
from errand_api.deps import AdminDep, PrincipalDep, ServicesDep, SessionDep
from errand_api.errors import InvalidJob, KeyNotFound
from errand_api.schemas import KeyCreate, KeyCreated, KeyPublic, UserCreate, UserPublic
from errand_schema.auth import add_key, key_prefix
from errand_schema.models import ApiKey, User, utcnow

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/keys", response_model=list[KeyPublic])
def list_keys(session: SessionDep, principal: PrincipalDep) -> list[KeyPublic]:
    """Your API keys (never their secrets), with when each was last used."""
    rows = session.exec(
        select(ApiKey).where(ApiKey.user_id == principal.user_id).order_by(col(ApiKey.created_at))
    ).all()
    return [KeyPublic(**r.model_dump()) for r in rows]


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, principal: PrincipalDep) -> KeyCreated:
    """Make a new API key for yourself; its secret is shown only in this answer."""
    user = session.get(User, principal.user_id)
    assert user is not None
    return _new_key(session, user, body.name)


@router.delete(
    "/keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "No such key"}},
)
def revoke_key(
    key_id: uuid.UUID, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> None:
    """Revoke one of your keys (an admin may revoke any). It is refused at once."""
    key = session.get(ApiKey, key_id)
    if key is None or (key.user_id != principal.user_id and not principal.is_admin):
        raise KeyNotFound(f"No key {key_id}.")
    key.revoked_at = key.revoked_at or utcnow()
    session.add(key)
    session.commit()
    # Every API process stops answering its cached keys (this one at once, Redis or not).
    if services.auth_cache is not None:
        services.auth_cache.clear()
    bump_epoch(services.redis, services.settings.redis_prefix)


@router.get("/admin/users", response_model=list[UserPublic], tags=["admin"])
def list_users(session: SessionDep, _admin: AdminDep) -> list[UserPublic]:
    """Every user (admins only)."""
    rows = session.exec(select(User).order_by(col(User.created_at))).all()
    return [UserPublic(**r.model_dump()) for r in rows]


@router.post(
    "/admin/users", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, tags=["admin"]
)
def create_user(body: UserCreate, session: SessionDep, _admin: AdminDep) -> KeyCreated:
    """Create a user with a first API key (admins only); the secret is shown this once."""
    user = User(name=body.name, role=body.role, rate_limit_per_s=body.rate_limit_per_s)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise InvalidJob(
            f"A user named {body.name!r} exists.", [{"field": "name", "message": "already taken"}]
        ) from exc
    return _new_key(session, user, "default")


@router.post(
    "/admin/users/{user_id}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    tags=["admin"],
    responses={404: {"description": "No such user"}},
)
def create_user_key(
    user_id: uuid.UUID, body: KeyCreate, session: SessionDep, _admin: AdminDep
) -> KeyCreated:
    """Make a new API key for any user (admins only)."""
    user = session.get(User, user_id)
    if user is None:
        raise KeyNotFound(f"No user {user_id}.")
    return _new_key(session, user, body.name)


def _new_key(session: Session, user: User, name: str) -> KeyCreated:
    token = add_key(session, user, name=name)
    session.commit()
    key = session.exec(select(ApiKey).where(ApiKey.prefix == key_prefix(token))).one()
    return KeyCreated(id=key.id, key=token, name=name, user_id=user.id)
