"""The OpenAPI document: every error response is documented as RFC 9457 problem+json."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from errand_api.problems import PROBLEM_MEDIA_TYPE


class FieldError(BaseModel):
    """One invalid field."""

    field: str
    message: str


class Problem(BaseModel):
    """An error (RFC 9457 ``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str
    errors: list[FieldError] | None = None


#: Error statuses every authenticated route may answer.
COMMON_ERRORS = {"401": "Missing or invalid credentials", "413": "Body too large"}


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents problem+json errors."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components.update(components["Problem"].pop("$defs", {}))
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, methods in doc.get("paths", {}).items():
            for operation in methods.values():
                _document_errors(operation, needs_auth=path.startswith("/v1"))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(operation: dict[str, Any], *, needs_auth: bool) -> None:
    responses = operation.setdefault("responses", {})
    if needs_auth:
        for status, text in COMMON_ERRORS.items():
            responses.setdefault(status, {"description": text})
        responses.setdefault("422", {"description": "Invalid request"})
        responses.setdefault("400", {"description": "Malformed request"})
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for status, response in responses.items():
        if status[0] in "45":
            response["content"] = {PROBLEM_MEDIA_TYPE: problem}
