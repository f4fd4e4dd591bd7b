"""Who the agent's HTTP server answers (``p2pmodel.core.httpguard``): the Host names it is,
and the requests a page of another site made a browser send."""

from __future__ import annotations

import pytest

from p2pmodel.core.httpguard import HostRule, cross_site, host_name


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (None, True),  # HTTP/1.0, no browser
        ("127.0.0.1", True),
        ("127.0.0.1:7421", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("10.1.2.3:7421", True),  # the configured host
        ("evil.example", False),
        ("evil.example:7421", False),
        ("localhost.", False),
        ("127.0.0.1.evil.example", False),
        ("127.0.0.2", False),
        ("10.1.2.4", False),
        ("", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:65536", False),
        ("127.0.0.1:x", False),
        ("user@127.0.0.1", False),
        ("[::1]:7421", False),
        ("127.0.0.1 evil", False),
        ("127.0.0.1\x00", False),
    ],
)
def test_host_rule(host: str | None, ok: bool) -> None:
    """Only 127.0.0.1, localhost and the configured host, each with any port."""
    assert HostRule("10.1.2.3:7421").accepts(host) is ok


def test_host_rule_on_every_interface() -> None:
    """Listening on 0.0.0.0, any IPv4 address as a browser writes it is ours (nothing to
    rebind), but still no other name."""
    rule = HostRule("0.0.0.0:7421")
    assert rule.accepts("192.168.1.20:7421") and rule.accepts("localhost")
    assert not rule.accepts("0177.0.0.1") and not rule.accepts("evil.example")
    assert not HostRule("127.0.0.1:7421").accepts("192.168.1.20")
    assert host_name("LocalHost:1") == "localhost" and host_name("a:99999") is None


OWN = "127.0.0.1:7421"


@pytest.mark.parametrize(
    ("headers", "foreign"),
    [
        ({}, False),  # huggingface_hub
        ({"sec-fetch-site": "none"}, False),  # typed in, a bookmark
        ({"sec-fetch-site": "same-origin"}, False),  # the dashboard's script
        ({"sec-fetch-site": "Same-Origin "}, False),
        ({"origin": f"http://{OWN}"}, False),
        ({"referer": f"http://{OWN}/"}, False),
        ({"referer": f"http://user@{OWN}/x?y"}, False),
        ({"sec-fetch-site": "cross-site"}, True),
        ({"sec-fetch-site": "same-site"}, True),
        ({"sec-fetch-site": ""}, True),
        ({"origin": "http://evil.example"}, True),
        ({"origin": "null"}, True),
        ({"origin": f"https://{OWN}"}, True),
        ({"origin": "http://127.0.0.1:8888"}, True),
        ({"sec-fetch-site": "same-origin", "origin": "http://evil.example"}, True),
        ({"referer": "http://evil.example/"}, True),
        ({"referer": "not a url"}, True),
        ({"referer": "http://[x"}, True),
    ],
)
def test_cross_site(headers: dict[str, str], foreign: bool) -> None:
    """Sec-Fetch-Site other than same-origin/none, or an Origin or Referer of another
    origin, says a page of another site sent the request."""
    assert (cross_site(headers, OWN) is not None) is foreign


def test_without_a_host_every_origin_is_foreign() -> None:
    assert cross_site({"origin": "http://127.0.0.1"}, None) is not None
    assert cross_site({}, None) is None
