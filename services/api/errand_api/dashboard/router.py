"""``/admin`` (the operators' dashboard), ``/demo`` (the end-user demo) and their files.

Both pages are plain HTML with ES modules and no build step. They talk to the public
API with the key a person signs in with (kept in the tab's ``sessionStorage``) and to
the notifier over Socket.IO; the server only hands out files and a little configuration.
"""

import base64
import hashlib
import json
import string
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from errand_api.dashboard.assets import (
    CLIENT_ENTRY,
    CLIENT_PREFIX,
    IMMUTABLE,
    REVALIDATE,
    STATIC_DIR,
    client_dir,
    client_missing_message,
    current_version,
    etag_matches,
    read_asset,
)
from errand_api.deps import ServicesDep

router = APIRouter(include_in_schema=False)

#: URL prefix of the dashboard's files; the content version follows it.
STATIC_URL = "/dashboard/static"
#: Admin endpoints the dashboard uses only when this API has them (feature detection
#: without a request that could 404).
OPTIONAL_ENDPOINTS = {
    "pause": "/v1/admin/pause",
    "resume": "/v1/admin/resume",
    "pauses": "/v1/admin/pauses",
    "breakers": "/v1/admin/breakers",
    "close_breaker": "/v1/admin/breakers/{key}",
}


@router.get("/admin")
def admin_page(request: Request, services: ServicesDep) -> Response:
    """The admin dashboard (sign in with an admin API key)."""
    return _page(request, "admin.html", _config(request, services))


@router.get("/admin/")
def admin_page_slash() -> RedirectResponse:
    """Send ``/admin/`` to ``/admin``."""
    return RedirectResponse("/admin", status_code=308)


@router.get("/demo")
def demo_page(request: Request, services: ServicesDep) -> Response:
    """A product page that embeds Errand with the JavaScript client."""
    return _page(request, "demo.html", _config(request, services))


@router.get(STATIC_URL + "/{version}/{path:path}")
def static_file(version: str, path: str, request: Request) -> Response:
    """A dashboard file: cached for a year under the current version, else revalidated."""
    asset = read_asset(path)
    headers = {
        "Cache-Control": IMMUTABLE if version == current_version() else REVALIDATE,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _config(request: Request, services: ServicesDep) -> dict[str, Any]:
    settings = services.settings
    paths = _api_paths(request)
    return {
        # Optional settings: read when the API's settings define them.
        "grafana_url": settings.grafana_url,
        "notifier_url": settings.notifier_public_url,
        "features": {name: path in paths for name, path in OPTIONAL_ENDPOINTS.items()},
        "client_error": None if client_dir() is not None else client_missing_message(),
    }


def _api_paths(request: Request) -> set[str]:
    # The OpenAPI document lists every API path (FastAPI builds it once and caches it);
    # ``app.routes`` holds included routers unexpanded in recent FastAPI versions.
    schema: dict[str, Any] = request.app.openapi()
    return set(schema.get("paths", {}))


def _page(request: Request, template: str, config: dict[str, Any]) -> Response:
    version = current_version()
    base = f"{STATIC_URL}/{version}/"
    import_map = json.dumps(
        {
            "imports": {
                "socket.io-client": base + "vendor/socket.io.esm.min.js",
                "errand-client": base + CLIENT_PREFIX + CLIENT_ENTRY,
            }
        },
        indent=2,
    )
    script_hash = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode()
    html = string.Template((STATIC_DIR / template).read_text()).safe_substitute(
        base=base,
        importmap=import_map,
        config=_script_json(config),
    )
    body = html.encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    headers = {
        "Cache-Control": REVALIDATE,
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": _csp(script_hash, config.get("notifier_url")),
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def _script_json(value: object) -> str:
    # Inside <script type="application/json">: "<" must not close the element.
    return json.dumps(value).replace("<", "\\u003c")


def _csp(import_map_hash: str, notifier_url: object) -> str:
    connect = ["'self'"]
    if isinstance(notifier_url, str) and notifier_url:
        origin = notifier_url.rstrip("/")
        connect += [origin, origin.replace("http", "ws", 1)]
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' 'sha256-{import_map_hash}'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src " + " ".join(connect),
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
