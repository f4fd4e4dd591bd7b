"""Which peers are near (on one of this agent's own subnets) and how fast each one sends (pure).

Theory of operation. An office of several subnets is joined by routers; a byte that crosses a
router into a subnet should cross it once and then spread inside the subnet. So the agent
sorts its peers by where their proven addresses are: a peer with an address inside one of
the networks of this agent's own interfaces (``10.0.1.7`` in ``10.0.1.0/24``) is *near*; any
other is *far* ("via router"). With one segment every peer is near and nothing changes.
Sharing uses it to take a unit from near holders when there are any and to let one near
agent bring a far unit in (``core.sharing``); ``status`` and the dashboard show it.

``RateMeter`` keeps, per peer, the rate at which its bytes arrived over the LAN (an
exponential average of what each unit fetch measured), for the same display.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

VIA_ROUTER = "via router"
RATE_WEIGHT = 0.5  # weight of the newest measure in a peer's average
MAX_RATES = 4096  # peers whose rate is kept (the oldest measured forgotten first)


def networks(interfaces: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """This agent's networks from its interfaces as ``address/prefix`` (``10.0.1.5/24``);
    entries without a prefix, loopback or not IPv4 are left out."""
    out: list[ipaddress.IPv4Network] = []
    for text in interfaces:
        if "/" not in text:
            continue
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            continue
        if not isinstance(iface, ipaddress.IPv4Interface) or iface.is_loopback:
            continue
        if iface.network not in out:
            out.append(iface.network)
    return out


@dataclass(frozen=True)
class Locality:
    """Where peers are, seen from an agent on ``nets``. No network known (none given, only
    loopback): every peer is near, as on one segment."""

    nets: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def of(cls, interfaces: Iterable[str]) -> Locality:
        return cls(tuple(networks(interfaces)))

    def subnet_of(self, hosts: Iterable[str]) -> str | None:
        """The first of our networks one of ``hosts`` is in (as text), None if none is."""
        for host in hosts:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            for net in self.nets:
                if ip in net:
                    return str(net)
        return None

    def near(self, hosts: Iterable[str]) -> bool:
        """Is a peer at these addresses on one of our subnets (or do we know none)?"""
        hosts = list(hosts)
        if not self.nets:
            return True
        if any(is_loopback(h) for h in hosts):
            return True  # on this machine (tests, a second home)
        return self.subnet_of(hosts) is not None

    def where(self, hosts: Iterable[str]) -> str:
        """``status``'s word for a peer: its subnet, or "via router"."""
        hosts = list(hosts)
        return self.subnet_of(hosts) or ("local" if self.near(hosts) else VIA_ROUTER)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (False for a name or nonsense)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RateMeter:
    """Per peer, the rate its LAN bytes arrived at (bytes/s), from measured fetches."""

    _rates: dict[str, float] = field(default_factory=dict)

    def measured(self, peer: str, nbytes: int, seconds: float) -> None:
        """``nbytes`` of a fetch came from ``peer`` over ``seconds``. Fetches too short or
        too small to say anything are ignored."""
        if nbytes <= 0 or seconds <= 0.05:
            return
        rate = nbytes / seconds
        old = self._rates.pop(peer, None)
        self._rates[peer] = rate if old is None else old + RATE_WEIGHT * (rate - old)
        while len(self._rates) > MAX_RATES:
            del self._rates[next(iter(self._rates))]

    def rate(self, peer: str) -> float | None:
        return self._rates.get(peer)
