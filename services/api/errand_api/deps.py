"""FastAPI dependencies: settings, database session, the caller, shared services."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import dramatiq
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from errand_api.authcache import AuthCache
from errand_api.catalog import Catalog
from errand_api.errors import Forbidden, Unauthorized
from errand_api.publisher import Publisher
from errand_api.ratelimit import TokenBucket
from errand_api.settings import ApiSettings
from errand_api.submission import SubmissionRules
from errand_schema.auth import CALLER_KEY, Principal
from errand_schema.estimates import Estimator
from errand_schema.events import EventPublisher
from errand_schema.jwt_auth import JwtVerifier, authenticate_token

if TYPE_CHECKING:
    from errand_api.grouped import SubmissionGroups


@dataclass
class Services:
    """What routes need beyond the request, built once in ``create_app``."""

    engine: Engine
    broker: dramatiq.Broker
    publisher: Publisher
    events: EventPublisher
    catalog: Catalog
    redis_ping: "RedisPing"
    limiter: TokenBucket
    rules: SubmissionRules
    settings: ApiSettings
    jwt: JwtVerifier | None = None
    #: The Redis client (breakers, pauses' readers); ``memory://`` in dev mode.
    redis: Any = None
    #: Start and finish estimates of queued and running jobs.
    estimator: Estimator = field(default_factory=Estimator)
    #: API keys authenticated a moment ago (None: every request reads the database).
    auth_cache: AuthCache | None = None
    #: Plain submissions run in groups (:mod:`errand_api.grouped`); None: each alone.
    groups: "SubmissionGroups | None" = None


class RedisPing:
    """Checks Redis for ``/readyz``."""

    def __init__(self, redis: object) -> None:
        self._redis = redis

    def __call__(self) -> bool:
        """Return whether Redis answers."""
        try:
            return bool(self._redis.ping())  # type: ignore[attr-defined]
        except Exception:  # readiness probes report, they never raise
            return False


async def get_services(request: Request) -> Services:
    """Return the app's services (``async``: no I/O, so no hop to a worker thread)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    """Yield a database session for one request.

    ``async`` so that FastAPI needs no worker thread to open it and none to close it
    when the route already handed its connection back (a session makes no I/O until
    first used). A session still holding a connection is closed in a worker thread:
    its rollback is I/O, which must not block the event loop.
    """
    session = Session(services.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False, description="An Errand API key.")


async def get_principal(
    session: SessionDep,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the authenticated caller.

    ``async``: an API key authenticated a moment ago is answered from
    :class:`~errand_api.authcache.AuthCache` on the event loop; otherwise the database
    is read on a worker thread.

    Raises:
        Unauthorized: No bearer token, or one that is unknown or revoked.
    """
    if credentials is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    token = credentials.credentials
    cache = services.auth_cache
    epoch = None
    if cache is not None and not (services.jwt and JwtVerifier.looks_like_jwt(token)):
        epoch = await cache.epoch()
        hit = cache.get(token, epoch) if epoch is not None else None
        if hit is not None:
            principal, limits = hit
            session.info[CALLER_KEY] = limits  # as the database path leaves them
            return principal
    principal = await run_in_threadpool(_authenticate, session, services, token)
    if cache is not None and epoch is not None:
        cache.put(token, principal, session.info[CALLER_KEY], epoch)
    return principal


def _authenticate(session: Session, services: Services, token: str) -> Principal:
    found = authenticate_token(session, token, services.jwt)
    if found is None:
        raise Unauthorized("The API key or token is not valid.")
    # Also hands the connection back before the handler's thread hop: a request must
    # not hold one while it waits for a thread (threads waiting for connections held
    # by requests waiting for threads would deadlock under a large burst).
    session.commit()  # last_used_at, when it moved
    return found[0]


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_admin(principal: PrincipalDep) -> Principal:
    """Return the caller if it is an admin.

    Raises:
        Forbidden: The caller is not an admin.
    """
    if not principal.is_admin:
        raise Forbidden("This endpoint is for admins.")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
