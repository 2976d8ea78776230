"""RFC 9457 ``application/problem+json`` for every error the API returns."""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from errand_api.errors import ApiError

logger = logging.getLogger(__name__)

#: Base of the ``type`` URIs; each error code is a stable slug under it.
PROBLEM_BASE = "https://errand.dev/problems/"
#: Media type of error responses.
PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Return a problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None) or str(uuid.uuid4()),
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def field_errors(raw: Any) -> list[dict[str, str]]:
    """Turn pydantic's ``errors()`` into ``[{field, message}]`` (body prefix dropped)."""
    out = []
    for err in raw:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid"))})
    return out


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that render every error as problem+json."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return problem(
            request, exc.status_code, exc.code, exc.title, exc.detail, exc.errors, headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        status = 400 if malformed else 422
        code = "malformed_json" if malformed else "validation_error"
        title = "Malformed JSON" if malformed else "Invalid request"
        detail = "The body is not valid JSON." if malformed else "The request is not valid."
        return problem(request, status, code, title, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(request, exc.status_code, code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem(
            request,
            500,
            "internal_error",
            "Internal error",
            "Something went wrong on our side; the request id identifies it.",
        )
