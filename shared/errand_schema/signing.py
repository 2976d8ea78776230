"""HMAC-SHA256 signatures for webhooks and callbacks, and how receivers verify them.

The header is ``Errand-Signature: t=<unix seconds>,v1=<hex digest>``, where the digest
is ``HMAC-SHA256(secret, f"{t}.{raw body}")``. Receivers recompute it over the raw body
and refuse timestamps older than a tolerance, so a captured request cannot be replayed
later.
"""

import hashlib
import hmac
import time

#: Name of the signature header.
SIGNATURE_HEADER = "Errand-Signature"
#: Default largest age of a signature a receiver accepts.
DEFAULT_TOLERANCE_S = 300


class SignatureError(Exception):
    """A signature header is missing, malformed, stale or wrong."""


def sign_body(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Return the signature header value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a signature header against the raw body.

    Raises:
        SignatureError: It is missing, malformed, older than ``tolerance_s`` or wrong.
    """
    if not header:
        raise SignatureError("missing signature header")
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError) as exc:
        raise SignatureError("malformed signature header") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError("signature timestamp outside tolerance")
    expected = sign_body(secret, body, ts).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise SignatureError("signature mismatch")
