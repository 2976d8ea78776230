"""The plain ``POST /v1/jobs`` on a path of its own, around FastAPI's (bench/README.md).

A third of the API's CPU per submission went to FastAPI's machinery around the route:
matching it among every route, solving its dependencies, the request and response
wrappers. The route itself is plain Python: :func:`~errand_api.routes.jobs.submit_job`.
This ASGI middleware answers the plain case by calling that same function with what
FastAPI would have given it, and hands every other request to FastAPI unchanged:

- ``POST /v1/jobs`` with an ``application/json`` body and no ``Idempotency-Key``;
- an API key this process authenticated a moment ago
  (:class:`~errand_api.authcache.AuthCache`, read under the current epoch as
  :func:`~errand_api.deps.get_principal` does);
- a body that is valid JSON and a valid :class:`~errand_api.schemas.JobCreate`.

Anything else (no key, a key not in memory, a JWT, a malformed or invalid body, an
idempotent submission) goes to FastAPI with the body as read, so its answers, errors
included, are FastAPI's. What the plain path's function raises is answered by the
app's own handler of :class:`~errand_api.errors.ApiError` (problem+json), and anything
else reaches the server-error handler as from a route. It runs inside
:class:`~errand_api.main.RequestContext` (request id, size limit, HTTP metrics: the
route is set on the scope so they name it) and inside tracing.

It assumes the route has no dependencies but its parameters' (none on the route, its
router or the app: ``tests/unit/api/test_plain_submission.py`` checks), and is not
taken behind a ``root_path`` (the path it compares is the full one); a request that
falls back waits for the auth epoch twice (here, then in FastAPI's dependency).
"""

import json
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from sqlmodel import Session
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errand_api.deps import Services
from errand_api.errors import ApiError
from errand_api.grouped import groupable
from errand_api.routes import jobs
from errand_api.schemas import JobCreate
from errand_schema.auth import CALLER_KEY, CallerLimits, Principal
from errand_schema.jwt_auth import JwtVerifier

PATH = "/v1/jobs"


class PlainSubmission:
    """Answer plain ``POST /v1/jobs`` requests without FastAPI's routing and dependencies."""

    def __init__(self, app: ASGIApp, route: Any = None) -> None:
        """``route``: the FastAPI route of ``POST /v1/jobs`` (named in the scope)."""
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        token = _bearer(headers.get("authorization"))
        services: Services = scope["app"].state.services
        cache = services.auth_cache
        if (
            token is None
            or cache is None
            or "idempotency-key" in headers
            or not _json_content(headers.get("content-type"))
            or (services.jwt is not None and JwtVerifier.looks_like_jwt(token))
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        epoch = await cache.epoch()
        hit = cache.get(token, epoch) if epoch is not None else None
        job = _job(body) if hit is not None else None
        if hit is None or job is None:
            await self.app(scope, _replay(body, receive), send)
            return
        principal, limits = hit
        scope["route"] = self.route
        try:
            cap = services.settings.max_in_flight_per_user
            if services.groups is not None and groupable(job, limits, cap):
                response = await services.groups.submit(principal, limits, job)
            else:
                response = await run_in_threadpool(_submit, services, principal, limits, job)
        except ApiError as exc:
            handler = scope["app"].exception_handlers[ApiError]
            response = await handler(Request(scope), exc)
        await response(scope, receive, send)


def _submit(
    services: Services, principal: Principal, limits: CallerLimits, job: JobCreate
) -> Response:
    """The route's function, with what FastAPI's dependencies would have given it."""
    session = Session(services.engine, expire_on_commit=False)
    session.info[CALLER_KEY] = limits  # as get_principal leaves a cached caller
    try:
        # FastAPI's sub-response: headers only, no status until the route sets one
        sub = Response()
        del sub.headers["content-length"]
        sub.status_code = None  # type: ignore[assignment]
        result = jobs.submit_job(
            body=job,
            response=sub,
            session=session,
            services=services,
            principal=principal,
            idempotency_key=None,
        )
        if isinstance(result, Response):
            return result
        return jobs.as_json(result, sub, 202)
    finally:
        session.close()


def _bearer(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``, parsed as FastAPI's ``HTTPBearer``
    parses it."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def _json_content(content_type: str | None) -> bool:
    """Whether the body is ``application/json``, which FastAPI reads as JSON (it also
    reads ``application/*+json``, left to it; with no type at all it does not)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (None when the client disconnected first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` giving ``body`` back first, then what the client sends next."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def _job(body: bytes) -> JobCreate | None:
    """The body as FastAPI validates it (parsed, then the model), or None if it is not."""
    try:
        return JobCreate.model_validate(json.loads(body))
    # JSONDecodeError is a ValueError; a deeply nested body a RecursionError (FastAPI
    # answers both: 400)
    except (ValueError, RecursionError, ValidationError):
        return None
