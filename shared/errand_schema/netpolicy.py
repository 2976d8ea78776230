"""Which URLs Errand may call (webhooks, callbacks, alerts): a guard against SSRF.

By default only public addresses are allowed: loopback, private, link-local, multicast
and reserved ranges are refused unless configuration allows them (``allow_private``) or
the host is listed in ``allowed_hosts``. Workers check again at delivery time, after
DNS resolution, so a name that later resolves to a private address is still refused.
"""

import ipaddress
import socket
from urllib.parse import urlsplit


class UrlRefused(Exception):
    """The URL points somewhere Errand must not call."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(
    url: str,
    *,
    allow_private: bool = False,
    allowed_hosts: frozenset[str] = frozenset(),
    resolve: bool = True,
) -> None:
    """Refuse ``url`` unless it is http(s) to a public address (or an allowed host).

    Args:
        url: The URL.
        allow_private: Allow loopback and private ranges (dev, tests, internal hooks).
        allowed_hosts: Host names or IP addresses always allowed.
        resolve: Resolve the host name and check every address it resolves to.

    Raises:
        UrlRefused: Not http(s), no host, or an address that is not public.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("only http and https URLs with a host are allowed")
    host = parts.hostname.lower()
    if allow_private or host in allowed_hosts:
        return
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            raise UrlRefused(f"{host} is a loopback host") from None
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise UrlRefused(f"cannot resolve {host}") from exc
        addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not _is_public(address):
            raise UrlRefused(f"{host} resolves to a non-public address ({address})")
