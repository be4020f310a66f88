"""One delivery: check the callback URL and the addresses its host resolves to, then POST the signed body once.

The connection goes to the address that was checked (the host name is sent as Host and as TLS SNI, and the
certificate is checked against it), so a DNS answer that changes between the check and the send changes nothing.
Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from common.webhooks import SIGNATURE_HEADER, address_problem, listed_exactly, sign, url_problem

__all__ = ["Delivery", "Outcome", "Refused", "Resolver", "resolve", "send"]

# Host name and port -> the addresses to check (and connect to).
Resolver = Callable[[str, int], list[str]]
_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Delivery:
    """A due delivery as the private API hands it out: where, which attempt, and the exact bytes to send."""

    uid: str
    url: str
    attempt: int
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """How an attempt went; `permanent` failures (a refused URL or address) are not tried again."""

    ok: bool
    error: str | None = None
    permanent: bool = False


class Refused(Exception):
    """The callback URL, or an address its host resolves to, must not be called."""


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (IPv4 and IPv6), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def pinned_target(url: str, allowed: frozenset[str], resolver: Resolver) -> tuple[str, str, str]:
    """(URL with the checked address in place of the host, Host header, host name); Refused when not allowed."""
    problem = url_problem(url, allowed)
    if problem:
        raise Refused(problem)
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = [host] if _is_ip(host) else resolver(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    listed = listed_exactly(host, allowed)
    for address in addresses:
        problem = address_problem(address, host_listed=listed)
        if problem:
            raise Refused(f"refused to call {host}: {problem}")
    address = addresses[0]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    host_header = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl(), host_header, host


def send(
    client: httpx.Client, delivery: Delivery, *, secret: str, allowed: frozenset[str], resolver: Resolver
) -> Outcome:
    """POST the delivery's body to its URL once; never raises."""
    try:
        target, host_header, host = pinned_target(delivery.url, allowed, resolver)
    except Refused as exc:
        return Outcome(ok=False, error=str(exc), permanent=True)
    except OSError as exc:
        return Outcome(ok=False, error=str(exc)[:_ERROR_LENGTH])
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        "User-Agent": "inference-server-webhooks/0.1",
        SIGNATURE_HEADER: sign(delivery.body, secret),
        "X-InferenceServer-Task": delivery.uid,
        "X-InferenceServer-Attempt": str(delivery.attempt),
    }
    extensions = {"sni_hostname": host} if target.startswith("https:") and not _is_ip(host) else {}
    try:
        with client.stream("POST", target, content=delivery.body, headers=headers, extensions=extensions) as answer:
            code = answer.status_code
            excerpt = b"" if 200 <= code < 400 else _excerpt(answer)
    except httpx.HTTPError as exc:
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:_ERROR_LENGTH])
    if 200 <= code < 300:
        return Outcome(ok=True)
    if 300 <= code < 400:
        return Outcome(ok=False, error=f"HTTP {code}: a redirect, which is not followed")
    return Outcome(ok=False, error=f"HTTP {code}: {excerpt.decode(errors='replace')}"[:_ERROR_LENGTH])


def _excerpt(answer: httpx.Response, limit: int = 200) -> bytes:
    """The first bytes of an error answer (a receiver's body is never read whole)."""
    kept = b""
    for chunk in answer.iter_bytes():
        kept += chunk
        if len(kept) >= limit:
            break
    return kept[:limit]
