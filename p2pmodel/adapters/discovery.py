"""Zeroconf adapter: announce this agent on the LAN and report peers appearing and leaving.

Theory of operation. python-zeroconf's sync API runs its own asyncio loop on a thread of its own,
and a sync ``ServiceBrowser`` calls its handlers on yet another thread (the browser's), one event
at a time. Everything that blocks (opening sockets, probing and announcing our name, saying
goodbye, closing) runs in a trio worker thread; the trio thread only awaits. On the browser thread
an added or updated service is resolved with ``Zeroconf.get_service_info`` (it blocks, which is
allowed there and nowhere else: zeroconf refuses it on its own loop thread; the announcement
normally carries every record, so it answers from the cache at once), checked, turned into an
immutable ``PeerSeen`` and handed to the trio thread with ``trio.from_thread.run_sync`` and the
token captured in ``run``. A restarted agent announces a new ``boot`` TXT value: with the
same records as before its crash, peers' caches would see nothing new and report nothing.
A removed service becomes ``PeerGone``. Services whose TXT record does
not parse are another agent's problem: logged and ignored. With an office key the TXT record
carries ``office``, the key's fingerprint (never the key): ``PeerService`` ignores agents of
another office at once. mDNS only tells us about goodbyes; a
peer that dies without one stays in mDNS caches for the record TTL, which is why liveness is
judged by ``peers.PeerTable`` from RPC answers, not here. Behind a router that reflects mDNS
(Avahi's ``enable-reflector=yes``, a "Bonjour gateway") announcements arrive from the router's
address but carry the announcer's own A record; peers are taken from the records, never from the
packet's source, so a reflected agent is reached at its routed address as it is. python-zeroconf
(0.154) checks neither the source address nor the IP TTL of responses, so they are not dropped
(tests/test_lan_subnets.py).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pmodel._tcp.local."
RESOLVE_TIMEOUT_MS = 1500  # one peer's slow resolve holds up the browser thread's other events
CLOSE_TIMEOUT = 3.0  # seconds for goodbye + close when cancelled

# An agent id is one DNS label (it names our service instance and host record).
_AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
_MAX_TXT_DIGITS = 5  # ports and protocol versions fit in 16 bits
_OFFICE_RE = re.compile(r"([0-9a-f]{16})?")  # a key's fingerprint, or none (an open office)


@dataclass(frozen=True)
class PeerSeen:
    """A peer announced itself (or changed its announcement)."""

    agent: str
    addrs: tuple[str, ...]
    rpc_port: int
    torrent_port: int
    proto: int
    office: str = ""  # the fingerprint of the agent's office key ("": an open office)


@dataclass(frozen=True)
class PeerGone:
    """A peer said goodbye (or its records expired)."""

    agent: str


DiscoveryEvent = PeerSeen | PeerGone


def valid_agent_id(agent: str) -> bool:
    return _AGENT_RE.fullmatch(agent) is not None


def instance_name(agent: str) -> str:
    return f"{agent}.{SERVICE_TYPE}"


def agent_of(name: str) -> str | None:
    """The agent id in a service instance name, or None if it is not one of ours."""
    suffix = "." + SERVICE_TYPE
    if not name.lower().endswith(suffix.lower()):
        return None
    agent = name[: -len(suffix)]
    return agent if valid_agent_id(agent) else None


def _txt_int(props: dict[str, str | None], key: str, lo: int, hi: int) -> int | None:
    value = props.get(key)
    if value is None or not 0 < len(value) <= _MAX_TXT_DIGITS:
        return None
    if not (value.isascii() and value.isdigit()):
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def parse_service(name: str, info: ServiceInfo) -> PeerSeen | None:
    """Turn a resolved service into a ``PeerSeen``, or None if anything in it is off."""
    agent = agent_of(name)
    if agent is None:
        return None
    props = info.decoded_properties
    if props.get("agent") != agent:
        return None
    proto = _txt_int(props, "proto", 0, 65535)
    rpc = _txt_int(props, "rpc", 1, 65535)
    bt = _txt_int(props, "bt", 1, 65535)
    addrs = tuple(info.parsed_addresses(IPVersion.V4Only))
    office = props.get("office") or ""
    if proto is None or rpc is None or bt is None or not addrs or not _OFFICE_RE.fullmatch(office):
        return None
    return PeerSeen(agent, addrs, rpc_port=rpc, torrent_port=bt, proto=proto, office=office)


def check_announcement(
    agent: str, interfaces: list[str], rpc_port: int, torrent_port: int, proto: int, office: str
) -> None:
    """Raise ValueError (the caller's fault) unless these can be announced: every announcer,
    this adapter and the test fakes alike, refuses the same arguments before opening anything."""
    if not valid_agent_id(agent):
        raise ValueError(f"agent id must be one DNS label of [A-Za-z0-9_-], got {agent!r}")
    if not interfaces:
        raise ValueError("at least one interface address is needed")
    for ip in interfaces:
        ipaddress.IPv4Address(ip)  # raises ValueError
    for port in (rpc_port, torrent_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"bad port {port}")
    if not 0 <= proto <= 65535:
        raise ValueError(f"bad protocol version {proto}")
    if not _OFFICE_RE.fullmatch(office):
        raise ValueError("office must be a key fingerprint (16 hex digits) or empty")


@dataclass
class _Running:
    """What ``run`` has opened so far, so the close can undo exactly that."""

    zc: Zeroconf | None = None
    browser: ServiceBrowser | None = None
    info: ServiceInfo | None = None
    closing: threading.Event = field(default_factory=threading.Event)  # set from trio
    token: trio.lowlevel.TrioToken | None = field(default=None, repr=False)


class Discovery:
    """Announce one agent and browse for the others; events go to ``on_event`` on the trio thread.

    ``on_event`` is a plain function called in trio context: it must not block.
    """

    def __init__(
        self,
        *,
        agent: str,
        interfaces: list[str],
        rpc_port: int,
        torrent_port: int,
        proto: int = 1,
        office: str = "",
        on_event: Callable[[DiscoveryEvent], None],
    ) -> None:
        check_announcement(agent, interfaces, rpc_port, torrent_port, proto, office)
        self.agent = agent
        self.interfaces = list(interfaces)
        self.rpc_port = rpc_port
        self.torrent_port = torrent_port
        self.proto = proto
        self.office = office
        self._on_event = on_event
        self._name = instance_name(agent)
        # Changes on every restart, so peers whose caches still hold our records from before a
        # crash see a TXT change (an update) instead of nothing at all.
        self.boot = secrets.token_hex(4)

    def service_info(self) -> ServiceInfo:
        properties = {
            "agent": self.agent,
            "proto": str(self.proto),
            "rpc": str(self.rpc_port),
            "bt": str(self.torrent_port),
            "boot": self.boot,
        }
        if self.office:  # a fingerprint only: it tells nothing of the key
            properties["office"] = self.office
        return ServiceInfo(
            SERVICE_TYPE,
            self._name,
            port=self.rpc_port,
            properties=properties,
            server=f"{self.agent}-p2pmodel.local.",
            parsed_addresses=self.interfaces,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce and browse until cancelled; started once registered and browsing."""
        st = _Running(token=trio.lowlevel.current_trio_token())
        try:
            # Not abandoned on cancel: it finishes (zeroconf bounds probing) so we can close it.
            await trio.to_thread.run_sync(self._start, st)
            task_status.started()
            await trio.sleep_forever()
        finally:
            st.closing.set()
            # Shielded from the cancel that got us here, bounded by its own deadline.
            deadline = trio.current_time() + CLOSE_TIMEOUT
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                await trio.to_thread.run_sync(self._stop, st, abandon_on_cancel=True)
            if scope.cancelled_caught:
                log.warning("zeroconf did not close within %.1f s; left to finish", CLOSE_TIMEOUT)

    # -- worker thread --------------------------------------------------------------------------

    def _start(self, st: _Running) -> None:
        # zeroconf calls handlers with keyword arguments: these names are part of its API.
        def handler(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            self._on_change(st, zeroconf, service_type, name, state_change)

        st.zc = Zeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        # Browse first: peers found while our own probing runs are not lost.
        st.browser = ServiceBrowser(st.zc, SERVICE_TYPE, handlers=[handler])
        info = self.service_info()
        st.zc.register_service(info)
        st.info = info

    def _stop(self, st: _Running) -> None:
        zc = st.zc
        if zc is None:
            return
        if st.info is not None:
            try:
                zc.unregister_service(st.info)  # goodbye first: peers drop us at once
            except Exception:
                log.warning("zeroconf goodbye failed", exc_info=True)
        if st.browser is not None:
            st.browser.cancel()  # joins the browser thread; it resolves nothing once closing
        zc.close()

    # -- browser thread -------------------------------------------------------------------------

    def _on_change(
        self,
        st: _Running,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if st.closing.is_set() or name.lower() == self._name.lower():
            return
        event: DiscoveryEvent
        if state_change is ServiceStateChange.Removed:
            agent = agent_of(name)
            if agent is None:
                return
            event = PeerGone(agent)
        else:
            info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
            if info is None:
                log.debug("could not resolve %s", name)
                return
            seen = parse_service(name, info)
            if seen is None:
                log.info("ignoring peer service %s with bad TXT %r", name, info.properties)
                return
            event = seen
        if st.closing.is_set():
            return
        try:
            trio.from_thread.run_sync(self._on_event, event, trio_token=st.token)
        except trio.RunFinishedError:
            pass
        except Exception:
            log.exception("discovery event handler failed on %r", event)
