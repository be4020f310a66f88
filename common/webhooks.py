"""Webhook rules both sides apply: which callback URLs are allowed, which addresses may be called, the signature.

The private API checks a `callback_url` against `WEBHOOK_ALLOWED_HOSTS` when a task is submitted; the `webhooks`
service checks it again when it sends, together with the addresses the host resolves to.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

__all__ = [
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "address_problem",
    "parse_allowed_hosts",
    "sign",
    "url_problem",
]

SIGNATURE_HEADER = "X-InferenceServer-Signature"
MAX_URL_LENGTH = 2048
# Cloud metadata services: never called, whatever the allow list says.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}


def parse_allowed_hosts(value: str | list[str] | None) -> frozenset[str]:
    """WEBHOOK_ALLOWED_HOSTS (comma or space separated host names; `*.example.org` for its subdomains), lowercased."""
    items = value if isinstance(value, list) else (value or "").replace(",", " ").split()
    return frozenset(item.strip().lower().rstrip(".") for item in items if item.strip())


def _host(url: str) -> str | None:
    try:
        return (urlsplit(url).hostname or "").rstrip(".") or None
    except ValueError:
        return None


def listed_exactly(host: str, allowed: frozenset[str]) -> bool:
    """True when the host itself (not only a `*.` pattern) is in the allow list."""
    return host.lower() in allowed


def url_problem(url: str, allowed: frozenset[str]) -> str | None:
    """Why a callback URL is refused (scheme, credentials, host not allowed), or None when it may be called."""
    if len(url) > MAX_URL_LENGTH:
        return f"callback_url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return "callback_url is no valid URL"
    if parts.scheme not in ("http", "https"):
        return "callback_url must be an http:// or https:// URL"
    if parts.username or parts.password:
        return "callback_url must not carry credentials"
    host = _host(url)
    if not host:
        return "callback_url names no host"
    if not allowed:
        return "callbacks are off on this server (WEBHOOK_ALLOWED_HOSTS is empty)"
    folded = host.lower()
    if folded in allowed or any(p.startswith("*.") and folded.endswith(p[1:]) for p in allowed):
        return None
    return f"callback host {host!r} is not in WEBHOOK_ALLOWED_HOSTS"


def address_problem(address: str, *, host_listed: bool) -> str | None:
    """Why a resolved address must not be called, or None.

    Metadata services never; loopback, link-local, private, reserved and multicast addresses only when the operator
    listed that exact host (a `*.` pattern is not enough: its DNS could point anywhere).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    internal = (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )
    if internal and not host_listed:
        return f"{ip} is an internal address (list the exact host in WEBHOOK_ALLOWED_HOSTS to allow it)"
    return None


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
