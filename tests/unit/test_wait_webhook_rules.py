"""The webhook rules without a server: allow list, address checks, the pinned target, the signature, the backoff."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from common.webhooks import address_problem, parse_allowed_hosts, sign, url_problem
from private_api.crud_webhooks import RetryPolicy
from webhooks.sending import Refused, pinned_target

ALLOWED = parse_allowed_hosts("hooks.example.org, *.lab.example.org  127.0.0.1")


def test_allow_list() -> None:
    assert {"hooks.example.org", "*.lab.example.org", "127.0.0.1"} == ALLOWED
    assert url_problem("https://HOOKS.example.org./x", ALLOWED) is None
    assert url_problem("https://a.b.lab.example.org/x", ALLOWED) is None
    assert "not in WEBHOOK_ALLOWED_HOSTS" in (url_problem("https://lab.example.org.evil/x", ALLOWED) or "")
    assert "not in WEBHOOK_ALLOWED_HOSTS" in (url_problem("https://evillab.example.org/x", ALLOWED) or "")
    assert "http" in (url_problem("file:///etc/passwd", ALLOWED) or "")
    assert "credentials" in (url_problem("https://u:p@hooks.example.org/", ALLOWED) or "")
    assert "valid" in (url_problem("https://hooks.example.org:99999/", ALLOWED) or "")
    assert "off" in (url_problem("https://hooks.example.org/", frozenset()) or "")


@pytest.mark.parametrize(
    ("address", "listed", "refused"),
    [
        ("93.184.216.34", False, False),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.0.0.7", False, True),
        ("192.168.1.1", False, True),
        ("172.16.0.1", False, True),
        ("100.64.0.1", False, True),
        ("169.254.10.10", False, True),
        ("::1", False, True),
        ("fe80::1", False, True),
        ("::ffff:10.0.0.1", False, True),
        ("0.0.0.0", False, True),
        ("169.254.169.254", True, True),  # metadata: never, even when listed
        ("fd00:ec2::254", True, True),
    ],
)
def test_addresses(address: str, listed: bool, refused: bool) -> None:
    assert (address_problem(address, host_listed=listed) is not None) is refused


def test_pinned_target_connects_to_the_checked_address() -> None:
    url, host_header, host = pinned_target(
        "https://x.lab.example.org:8443/hook?a=1", ALLOWED, lambda h, p: ["93.184.216.34"]
    )
    assert (url, host_header, host) == (
        "https://93.184.216.34:8443/hook?a=1",
        "x.lab.example.org:8443",
        "x.lab.example.org",
    )
    url, _, _ = pinned_target("http://hooks.example.org/h", ALLOWED, lambda h, p: ["2606:2800:220:1::1"])
    assert url == "http://[2606:2800:220:1::1]:80/h"
    # One internal address among the answers is enough to refuse: a pattern-allowed name may point anywhere.
    with pytest.raises(Refused, match="internal"):
        pinned_target("https://x.lab.example.org/", ALLOWED, lambda h, p: ["93.184.216.34", "10.0.0.1"])
    assert pinned_target("http://127.0.0.1:9/h", ALLOWED, lambda h, p: [])[0] == "http://127.0.0.1:9/h"


def test_signature() -> None:
    body = b'{"uid":"x"}'
    assert sign(body, "k" * 20) == "sha256=" + hmac.new(b"k" * 20, body, hashlib.sha256).hexdigest()


def test_backoff_doubles_up_to_its_max() -> None:
    policy = RetryPolicy(backoff_seconds=10, backoff_max_seconds=3600)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert policy.delay(30) == 3600
