"""Which peers are near (core.locality): pure, no sockets."""

from __future__ import annotations

import pytest

from p2pmodel.core.locality import VIA_ROUTER, Locality, RateMeter, networks


def test_networks_from_interfaces_skip_loopback_bare_addresses_and_garbage():
    nets = networks(["10.0.1.5/24", "127.0.0.1/8", "10.0.2.9", "nonsense/99", "fe80::1/64"])
    assert [str(n) for n in nets] == ["10.0.1.0/24"]
    assert networks(["10.0.1.5/24", "10.0.1.6/24"]) == networks(["10.0.1.5/24"])


def test_a_peer_on_one_of_our_subnets_is_near_and_others_are_via_router():
    where = Locality.of(["10.0.1.5/24", "192.168.7.2/16"])
    assert where.near(["10.0.1.77"]) and where.where(["10.0.1.77"]) == "10.0.1.0/24"
    assert where.near(["10.0.9.1", "192.168.200.3"])  # any one of its addresses
    assert where.where(["192.168.200.3"]) == "192.168.0.0/16"
    assert not where.near(["10.0.2.5"]) and where.where(["10.0.2.5"]) == VIA_ROUTER
    assert not where.near([]) and not where.near(["not-an-ip"])
    assert where.near(["127.0.0.1"])  # this machine


def test_no_known_network_means_one_segment_every_peer_near():
    assert Locality().near(["10.9.9.9"]) and Locality.of(["127.0.0.1/8"]).near(["8.8.8.8"])


def test_rate_meter_averages_and_ignores_what_says_nothing():
    m = RateMeter()
    assert m.rate("a") is None
    m.measured("a", 1000, 0.01)  # too short to say anything
    m.measured("a", 0, 5.0)
    assert m.rate("a") is None
    m.measured("a", 10_000_000, 1.0)
    assert m.rate("a") == pytest.approx(10e6)
    m.measured("a", 20_000_000, 1.0)
    assert m.rate("a") == pytest.approx(15e6)
