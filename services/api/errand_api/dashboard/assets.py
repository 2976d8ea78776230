"""Static files of the dashboard: lookup, a content version for cache busting, ETags.

The pages load every script and stylesheet under ``/dashboard/static/<version>/``, where
the version is a digest of the files' names, sizes and modification times. Relative ES
module imports inherit that prefix, so a changed file gets a new URL without a build
step, and assets under the current version can be cached for a year (``immutable``).
"""

import hashlib
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

from errand_api.errors import ApiError

logger = logging.getLogger(__name__)

#: Folder of the dashboard's own files (HTML templates, CSS, JS, vendored libraries).
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: URL prefix of the JavaScript client (``clients/js/src``) below the static prefix.
CLIENT_PREFIX = "client/"
#: The client's entry module, relative to its folder.
CLIENT_ENTRY = "index.js"
#: Where the JavaScript client lives in a source checkout (``clients/js/src``).
REPO_CLIENT_DIR = Path(__file__).resolve().parents[4] / "clients" / "js" / "src"
#: Where a wheel may carry a copy of it (packaging can force-include it there).
PACKAGED_CLIENT_DIR = STATIC_DIR / "client"
#: Cache-Control of assets under the current version: their URL changes with them.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Cache-Control of pages and of assets asked for under an old version: revalidate.
REVALIDATE = "no-cache"
#: How long a computed version is reused (a page load asks for it a few dozen times).
VERSION_TTL_S = 1.0

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


class AssetNotFound(ApiError):
    """No such dashboard file."""

    status_code = 404
    code = "asset_not_found"
    title = "Not found"


class ClientMissing(ApiError):
    """The JavaScript client is not in this installation."""

    status_code = 503
    code = "js_client_missing"
    title = "JavaScript client missing"


@dataclass(frozen=True)
class Asset:
    """One file ready to send."""

    body: bytes
    media_type: str
    etag: str


def client_dir() -> Path | None:
    """Return the folder of the JavaScript client, or ``None`` when it is not installed."""
    for folder in (PACKAGED_CLIENT_DIR, REPO_CLIENT_DIR):
        if (folder / CLIENT_ENTRY).is_file():
            return folder
    return None


def client_missing_message() -> str:
    """Explain where the JavaScript client was looked for."""
    return (
        f"The Errand JavaScript client ({CLIENT_ENTRY}) was not found in {REPO_CLIENT_DIR} "
        f"or {PACKAGED_CLIENT_DIR}. Run the API from a source checkout that has "
        "clients/js/src, or install a wheel that ships it."
    )


def _roots() -> list[tuple[str, Path]]:
    roots = [("", STATIC_DIR)]
    found = client_dir()
    if found is not None and found != PACKAGED_CLIENT_DIR:
        roots.insert(0, (CLIENT_PREFIX, found))
    return roots


_version_cache: tuple[float, str] = (-VERSION_TTL_S, "")


def current_version() -> str:
    """Return a short digest of every served file's name, size and modification time.

    Note:
        Recomputed at most once a second (a few dozen ``stat`` calls), so editing a file
        while ``errand dev`` runs changes the URLs at the next reload.
    """
    global _version_cache
    computed_at, version = _version_cache
    if time.monotonic() - computed_at < VERSION_TTL_S:
        return version
    version = _compute_version()
    _version_cache = (time.monotonic(), version)
    return version


def _compute_version() -> str:
    digest = hashlib.sha256()
    for prefix, root in _roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            rel = prefix + path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _resolve(rel_path: str) -> Path | None:
    if not rel_path or "\\" in rel_path or "\0" in rel_path:
        return None
    parts = rel_path.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    for prefix, root in _roots():
        if prefix and not rel_path.startswith(prefix):
            continue
        candidate = (root / rel_path[len(prefix) :]).resolve()
        if candidate.is_file() and candidate.is_relative_to(root.resolve()):
            return candidate
    return None


def read_asset(rel_path: str) -> Asset:
    """Return the file at ``rel_path`` below the static prefix.

    Raises:
        ClientMissing: A client file was asked for and the client is not installed.
        AssetNotFound: There is no such file (or the path leaves the static folders).
    """
    path = _resolve(rel_path)
    if path is None:
        if rel_path.startswith(CLIENT_PREFIX) and client_dir() is None:
            logger.warning("%s", client_missing_message())
            raise ClientMissing(client_missing_message())
        raise AssetNotFound(f"No dashboard file {rel_path!r}.")
    body = path.read_bytes()
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, media_type or "application/octet-stream", etag)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak or strong, or ``*``)."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags
