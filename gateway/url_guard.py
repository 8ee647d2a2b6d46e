"""Refuse media URLs that point into the server's own network (SSRF).

A client-supplied http(s) URL is fetched by the gateway; without this a
request could make it read loopback services, the LAN or a cloud metadata
endpoint. Every hop (redirects included) must resolve to public addresses
only, unless the operator allows private ones (``--allow-private-media-urls``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class BlockedURL(ValueError):
    pass


async def ensure_public(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedURL("only http(s) URLs with a host name can be fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BlockedURL(f"cannot resolve {parts.hostname}: {exc.strerror or exc}") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise BlockedURL(f"{parts.hostname} resolves to a non-public address ({ip}); the server does not fetch those")
