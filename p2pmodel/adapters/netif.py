"""This machine's network interfaces (the agent listens and announces on their addresses)."""

from __future__ import annotations


def local_ipv4() -> list[str]:
    """This host's IPv4 addresses other than loopback (``127.0.0.1`` if there is none)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


def local_ipv4_networks() -> list[str]:
    """This host's IPv4 addresses with their prefix length (``10.0.1.5/24``), loopback left
    out: which subnets the agent is on."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(f"{ip.ip}/{ip.network_prefix}")
    return out
