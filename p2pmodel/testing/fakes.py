"""In-memory stand-ins for the agent's outside things, so real agents run without root, sockets
or libtorrent: many of them in one trio run, under a fake clock if a test wants.

- ``MemoryNetwork`` / ``MemoryTransport``: the peer link's transport over in-memory streams.
  Connecting where nobody listens is refused; an agent that stops takes its connections down.
- ``MemoryMdns``: discovery on a shared bus. Stopping says goodbye; ``crash`` first makes the
  agent vanish without one (like ``kill -9``: peers must find out by themselves); ``announce``
  delivers any announcement at all, true or not (a spoofing responder on the LAN).
- ``SwarmNet`` / ``FakeSwarm``: the swarm adapter's interface (``services.swarm.SwarmAdapter``).
  Transfers copy bytes between agents' files at a set LAN rate, checking every piece against
  the torrent info's hashes (a bad piece is never written), and whole blobs against their
  digest before they enter the store, as libtorrent and the real adapter do.
- ``MemoryMirror``: ``testing.mirror.Mirror``'s decisions (routes, faults, byte counters)
  behind an ``httpx.MockTransport``, with its pacing on trio's clock.

The contract tests (``tests/test_contracts.py``) run the same checks against these and the
real adapters.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from p2pmodel.adapters.hashing import digest_file
from p2pmodel.adapters.store import Store
from p2pmodel.adapters.transport import StreamHandler
from p2pmodel.core.digests import algorithm, hex_part
from p2pmodel.core.torrents import SwarmFetch, expected_shape, with_cert, without_cert
from p2pmodel.testing.mirror import Faults, Mirror, Pacer, Port, block_size, corrupt_block
from p2pmodel.testing.models import Repo

MiB = 1024 * 1024

# -- the peer link's transport ---------------------------------------------------------------------


@dataclass
class _Listener:
    handler: StreamHandler
    nursery: trio.Nursery


class MemoryNetwork:
    """Who listens where, for every ``MemoryTransport`` made from it."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self._ports = itertools.count(20000)
        self.connections = 0
        self.open_from: collections.Counter[str] = collections.Counter()  # host -> open, dialled
        self.names: dict[str, str] = {}  # host name -> address (the network's /etc/hosts)

    def transport(self, host: str = "memory") -> MemoryTransport:
        return MemoryTransport(self, host)


class MemoryTransport:
    def __init__(self, net: MemoryNetwork, host: str = "memory") -> None:
        self.net = net
        self.host = host  # where its connections come from (per-host limits count by it)

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self.net.listeners.get((self.net.names.get(host, host), port))
        if listener is None:
            raise ConnectionRefusedError(f"nothing listens on {host}:{port}")
        client, server = trio.testing.memory_stream_pair()
        server.remote_host = self.host  # type: ignore[attr-defined]
        self.net.connections += 1
        listener.nursery.start_soon(listener.handler, server)
        return _Dialled(client, self.net.open_from, self.host)

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        port = port or next(self.net._ports)
        if (host, port) in self.net.listeners:
            raise OSError(98, f"{host}:{port} is in use")
        async with trio.open_nursery() as nursery:
            self.net.listeners[(host, port)] = _Listener(handler, nursery)
            try:
                task_status.started(port)
                await trio.sleep_forever()
            finally:
                del self.net.listeners[(host, port)]
                nursery.cancel_scope.cancel()


class _Dialled(trio.abc.Stream):
    """A dialled stream that counts itself open (``MemoryNetwork.open_from``) until closed."""

    def __init__(self, inner: trio.abc.Stream, counter: collections.Counter[str], host: str):
        self.inner, self._counter, self._host = inner, counter, host
        counter[host] += 1

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self._host:
            self._counter[self._host] -= 1
            self._host = ""
        await self.inner.aclose()


# -- discovery -------------------------------------------------------------------------------------


class MemoryMdns:
    """A shared announcement bus: every announcer hears every other one."""

    def __init__(self) -> None:
        self._members: dict[str, tuple[Any, Callable[[Any], None]]] = {}
        self.crashed: set[str] = set()

    def factory(self) -> Callable[..., FakeAnnouncer]:
        return functools.partial(FakeAnnouncer, self)

    def crash(self, agent: str) -> None:
        """The agent's next stop sends no goodbye (a power cut, ``kill -9``)."""
        self.crashed.add(agent)

    def announce(self, event: Any) -> None:
        """Deliver ``event`` (a ``PeerSeen`` or ``PeerGone`` naming any agent, with any
        address) to every member but the agent it names, as anyone on the LAN can."""
        for agent, (_, on_event) in list(self._members.items()):
            if agent != event.agent:
                on_event(event)


class FakeAnnouncer:
    def __init__(
        self,
        bus: MemoryMdns,
        *,
        agent: str,
        interfaces: list[str],
        rpc_port: int,
        torrent_port: int,
        proto: int,
        office: str = "",
        on_event: Callable[[Any], None],
    ) -> None:
        from p2pmodel.adapters.discovery import PeerSeen, check_announcement

        check_announcement(agent, interfaces, rpc_port, torrent_port, proto, office)
        self.bus = bus
        self.agent = agent
        self.on_event = on_event
        self.seen = PeerSeen(agent, tuple(interfaces), rpc_port, torrent_port, proto, office)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from p2pmodel.adapters.discovery import PeerGone

        bus = self.bus
        bus.crashed.discard(self.agent)
        others = [m for agent, m in bus._members.items() if agent != self.agent]
        if self.agent in bus._members:
            # Our previous announcer (other interfaces) is still stopping: its goodbye goes
            # out first, as zeroconf's does, and it must not take our place with it.
            for _, on_event in others:
                on_event(PeerGone(self.agent))
        me = bus._members[self.agent] = (self.seen, self.on_event)
        try:
            for seen, on_event in others:
                on_event(self.seen)
                self.on_event(seen)
            task_status.started()
            await trio.sleep_forever()
        finally:
            if bus._members.get(self.agent) is me:
                del bus._members[self.agent]
                if self.agent not in bus.crashed:
                    for _, on_event in list(bus._members.values()):
                        on_event(PeerGone(self.agent))


# -- the swarm -------------------------------------------------------------------------------------


def bdecode(data: bytes) -> Any:
    """Decode bencoded bytes (enough for torrent info dicts)."""

    def at(i: int) -> tuple[Any, int]:
        c = data[i : i + 1]
        if c == b"i":
            end = data.index(b"e", i)
            return int(data[i + 1 : end]), end + 1
        if c == b"l":
            out, i = [], i + 1
            while data[i : i + 1] != b"e":
                item, i = at(i)
                out.append(item)
            return out, i + 1
        if c == b"d":
            d, i = {}, i + 1
            while data[i : i + 1] != b"e":
                k, i = at(i)
                v, i = at(i)
                d[k] = v
            return d, i + 1
        colon = data.index(b":", i)
        n = int(data[i:colon])
        return data[colon + 1 : colon + 1 + n], colon + 1 + n

    value, end = at(0)
    if end != len(data):
        raise ValueError("trailing bytes")
    return value


def _pieces_ok(data: bytes, start: int, info: dict[bytes, Any]) -> bool:
    """Do the bytes at file offset ``start`` match the info's piece hashes?"""
    piece = info[b"piece length"]
    hashes = info[b"pieces"]
    for pos in range(0, len(data), piece):
        i = (start + pos) // piece
        want = hashes[20 * i : 20 * i + 20]
        if hashlib.sha1(data[pos : pos + piece], usedforsecurity=False).digest() != want:
            return False
    return True


class SwarmNet:
    """Every ``FakeSwarm`` by endpoint, and the LAN rate of each agent's link."""

    def __init__(self, lan_rate: float | None = 100 * MiB) -> None:
        self.lan_rate = lan_rate
        self.swarms: dict[tuple[str, int], FakeSwarm] = {}
        self._ports = itertools.count(30000)
        self.pieces_refused = 0

    def factory(self) -> Callable[..., FakeSwarm]:
        return lambda store, listen, port, tls=None: FakeSwarm(self, store, listen, port, tls)


@dataclass
class _Unit:
    size: int
    start: int
    stop: int
    info: bytes
    path: Path
    seeding: bool
    idle_since: float = 0.0


class FakeSwarm:
    """The swarm adapter's interface over plain file copies between agents' stores. With an
    office key (``tls``), like libtorrent's SSL torrents and IP filter: bytes move only
    between swarms of the same office CA whose filters let each other's address through."""

    def __init__(
        self, net: SwarmNet, store: Store, listen: Sequence[str], port: int = 0, tls: Any = None
    ) -> None:
        self.net = net
        self.store = store
        self.host = next(iter(listen))
        self.ca: bytes | None = tls.ca_pem if tls is not None else None
        self.allowed: set[str] | None = set() if tls is not None else None  # None: open
        self._port = port or next(net._ports)
        self._seeding: dict[str, int] = {}
        self._fetching: set[str] = set()
        self._units: dict[tuple[str, int], _Unit] = {}
        self._serving: collections.Counter[str] = collections.Counter()  # digest -> peers
        self.upload_limit: float | None = None
        self.uploaded = 0
        self.downloaded = 0
        self.hash_failures = 0

    @property
    def port(self) -> int:
        return self._port

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.net.swarms[(self.host, self._port)] = self
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.net.swarms.pop((self.host, self._port), None)

    def allow(self, hosts: set[str]) -> None:
        if self.allowed is not None:
            self.allowed = set(hosts)

    def _lets_in(self, host: str) -> bool:
        return self.allowed is None or host in self.allowed

    def listen_on(self, listen: Sequence[str]) -> None:
        self.net.swarms.pop((self.host, self._port), None)
        self.host = next(iter(listen))
        self.net.swarms[(self.host, self._port)] = self

    def _peer(self, endpoint: tuple[str, int]) -> FakeSwarm | None:
        """The swarm at ``endpoint``, if a connection to it would get through: the same
        office (CA), and each one's IP filter lets the other in."""
        other = self.net.swarms.get(endpoint)
        if other is None or other is self or other.ca != self.ca:
            return None
        if not (self._lets_in(other.host) and other._lets_in(self.host)):
            return None
        return other

    async def _carry(self, source: FakeSwarm, nbytes: int, digest: str) -> None:
        """The time ``nbytes`` take over the LAN (the slower of the link and the source's
        upload limit); the source counts a peer fetching ``digest`` meanwhile."""
        rates = [r for r in (self.net.lan_rate, source.upload_limit) if r]
        source._serving[digest] += 1
        try:
            if rates:
                await trio.sleep(nbytes / min(rates))
            else:
                await trio.lowlevel.checkpoint()
        finally:
            source._serving[digest] -= 1
        source.uploaded += nbytes
        self.downloaded += nbytes

    # -- whole blobs -------------------------------------------------------------------------

    def seed(self, digest: str, size: int, info: bytes | None = None) -> bool:
        if size == 0 or (info or self.store.torrent_info(digest)) is None:
            return digest in self._seeding
        self._seeding[digest] = size
        return True

    def seeding(self, digest: str) -> bool:
        return digest in self._seeding

    def holds_partial(self, digest: str) -> bool:
        return digest in self._fetching

    def info(self, digest: str) -> bytes | None:
        if digest in self._seeding or digest in self._fetching:
            info = self.store.torrent_info(digest)
            return with_cert(info, self.ca) if info is not None else None
        return None

    async def fetch(
        self,
        digest: str,
        size: int,
        info: bytes,
        peers: Sequence[tuple[str, int]],
        *,
        stall_timeout: float = 10.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> SwarmFetch:
        if not expected_shape(info, digest, size, self.ca):
            return SwarmFetch(False, "peer sent torrent info of the wrong shape")
        if digest in self._seeding or digest in self._fetching:
            return SwarmFetch(False, "already in the swarm")
        sources = [s for p in peers if (s := self._peer(p)) is not None and s.seeding(digest)]
        if not sources:
            await trio.sleep(stall_timeout)
            return SwarmFetch(False, f"no progress from peers for {stall_timeout:.0f} s")
        source = sources[0]
        self._fetching.add(digest)
        try:
            data = source.store.blob_path(digest).read_bytes()
            await self._carry(source, len(data), digest)
            if not _pieces_ok(data, 0, bdecode(info)):
                self.net.pieces_refused += 1
                self.hash_failures += 1
                await trio.sleep(stall_timeout)  # like libtorrent: waits for good pieces
                return SwarmFetch(False, f"no progress from peers for {stall_timeout:.0f} s", 0, 1)
            if on_progress is not None:
                on_progress(len(data))
            tmp = self.store.partial / "swarm" / hex_part(digest)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            if digest_file(tmp, algorithm(digest), size) != digest:
                tmp.unlink()
                return SwarmFetch(False, "bytes from peers failed the digest", len(data))
            self.store.save_torrent_info(digest, without_cert(info, self.ca))
            dest = self.store.blob_path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            self._seeding[digest] = size
            return SwarmFetch(True, "", len(data))
        finally:
            self._fetching.discard(digest)

    # -- unit torrents ---------------------------------------------------------------------

    def unit_info(self, digest: str, index: int) -> bytes | None:
        u = self._units.get((digest, index))
        return u.info if u is not None and u.seeding else None

    def add_unit(
        self,
        digest: str,
        size: int,
        index: int,
        span: range,
        info: bytes,
        path: Path,
        *,
        have: bool,
    ) -> None:
        if (digest, index) in self._units:
            return
        start, stop = bdecode(info)[b"p2pmodel unit"][1:]
        self._units[(digest, index)] = _Unit(size, start, stop, info, path, have)

    async def fetch_unit(
        self,
        digest: str,
        index: int,
        peers: Callable[[], Sequence[tuple[str, int]]],
        *,
        stall_timeout: float = 10.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> SwarmFetch:
        u = self._units.get((digest, index))
        if u is None:
            return SwarmFetch(False, "no such unit torrent")
        info = bdecode(u.info)
        bad = 0
        deadline = trio.current_time() + stall_timeout
        while trio.current_time() < deadline:
            for endpoint in peers():
                source = self._peer(endpoint)
                held = source._units.get((digest, index)) if source is not None else None
                if source is None or held is None or not held.seeding or held.info != u.info:
                    continue
                try:
                    # Blocking reads of small test files, on purpose: a thread would let the
                    # fake clock jump while it runs.
                    with open(held.path, "rb") as f:  # noqa: ASYNC230
                        f.seek(u.start)
                        data = f.read(u.stop - u.start)
                except OSError:  # moved into the store just now: its seeder re-points it
                    continue
                await self._carry(source, len(data), digest)
                if (digest, index) not in self._units:
                    return SwarmFetch(False, "torrent removed")
                if len(data) != u.stop - u.start or not _pieces_ok(data, u.start, info):
                    self.net.pieces_refused += 1
                    self.hash_failures += 1
                    bad += 1
                    continue  # a bad piece is never written: try another holder
                fd = os.open(u.path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, u.start)
                finally:
                    os.close(fd)
                if on_progress is not None:
                    on_progress(len(data))
                u.seeding = True
                return SwarmFetch(True, "", len(data))
            await trio.sleep(0.5)
        return SwarmFetch(False, f"no progress from peers for {stall_timeout:.0f} s", 0, bad)

    def rehome_units(self, digest: str) -> None:
        dest = self.store.blob_path(digest)
        for (d, index), u in list(self._units.items()):
            if d != digest:
                continue
            if u.seeding:
                u.path = dest
            else:
                del self._units[(d, index)]

    def drop_unit(self, digest: str, index: int) -> None:
        self._units.pop((digest, index), None)

    def drop_units(self, digest: str) -> None:
        for key in [k for k in self._units if k[0] == digest]:
            del self._units[key]

    def prune_units(self, now: float, keep: set[str], idle: float = 60.0) -> float | None:
        for key, u in list(self._units.items()):
            if not u.idle_since or key[0] in keep:
                u.idle_since = now
            elif now >= u.idle_since + idle:
                del self._units[key]
        return min((u.idle_since + idle for u in self._units.values()), default=None)

    def set_upload_limit(self, rate: float | None) -> None:
        self.upload_limit = rate

    def uploading(self) -> set[str]:
        return {d for d, n in self._serving.items() if n > 0}

    def unseed(self, digests: Sequence[str]) -> list[str]:
        busy = self.uploading()
        for digest in digests:
            if digest not in busy:
                self._seeding.pop(digest, None)
                for key in [k for k in self._units if k[0] == digest]:
                    del self._units[key]
        return [d for d in digests if d in busy]

    def statistics(self) -> dict[str, Any]:
        return {
            "port": self._port,
            "seeding": len(self._seeding),
            "fetching": len(self._fetching),
            "units": len(self._units),
            "uploaded": self.uploaded,
            "hash_failures": self.hash_failures,
        }

    def close(self) -> None:
        self._units.clear()


# -- the mirror ------------------------------------------------------------------------------------

BLOCK = 256 * 1024


class MemoryMirror:
    """``testing.mirror.Mirror`` served through ``httpx.MockTransport`` (no sockets), as
    ``http://<name>.mirror.test`` with its CDN at ``http://cdn.<name>.mirror.test``."""

    def __init__(
        self, repos: Sequence[Repo], faults: Faults | None = None, name: str = "hub"
    ) -> None:
        self.mirror = Mirror(list(repos), faults=faults or Faults())
        self.host = f"{name}.mirror.test"
        self.mirror._urls = {"hub": f"http://{self.host}", "cdn": f"http://cdn.{self.host}"}
        self._total = Pacer()

    @property
    def hub_url(self) -> str:
        return f"http://{self.host}"

    def serves(self, host: str) -> bool:
        return host in (self.host, f"cdn.{self.host}")

    @property
    def faults(self) -> Faults:
        return self.mirror.faults

    @property
    def served(self) -> int:
        return self.mirror.stats.bytes_served

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(self.handle),
            follow_redirects=True,
            headers={"Accept-Encoding": "identity"},
        )

    async def handle(self, request: httpx.Request) -> httpx.Response:
        port: Port = "cdn" if request.url.host.startswith("cdn.") else "hub"
        target = request.url.raw_path.decode("latin-1")
        body = await request.aread()
        reply = self.mirror.decide(
            port,
            request.method,
            target,
            request.headers.get("range"),
            body,
            request.headers.get("authorization"),
        )
        if reply.hang_up:
            # What httpx says of the real mirror's `down`: the connection was taken, then
            # closed unanswered (not refused).
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if reply.delay:
            await trio.sleep(reply.delay)
        length = reply.length if reply.file is not None else len(reply.body)
        headers = [*reply.headers, ("Content-Length", str(length))]
        path = target.partition("?")[0]
        if request.method == "HEAD":
            return httpx.Response(reply.status, headers=headers)
        if reply.file is None:
            if reply.counted:
                self.mirror.stats.count(path, len(reply.body))
            return httpx.Response(reply.status, headers=headers, content=reply.body)
        return httpx.Response(reply.status, headers=headers, content=self._body(reply, path))

    async def _body(self, reply: Any, path: str) -> AsyncIterator[bytes]:
        assert reply.file is not None
        pacer = Pacer()
        offset = reply.start
        stop = reply.start + (reply.length if reply.cut_at is None else reply.cut_at)
        with open(reply.file.data_path, "rb") as f:  # noqa: ASYNC230 (see fetch_unit)
            f.seek(offset)
            while offset < stop:
                faults = self.mirror.faults
                # The real mirror's block size: under a rate limit a body trickles in small
                # blocks instead of pausing for seconds between large ones.
                chunk = f.read(min(BLOCK, block_size(faults), stop - offset))
                if faults.corrupt:
                    chunk = corrupt_block(chunk, offset, reply.file.size)
                await pacer.wait(len(chunk), faults.per_conn_rate)
                await self._total.wait(len(chunk), faults.total_rate)
                self.mirror.stats.count(path, len(chunk))
                offset += len(chunk)
                yield chunk
        if reply.cut_at is not None:
            raise httpx.RemoteProtocolError("the mirror cut the body short")


# -- a simulated office of real agents -------------------------------------------------------------


@dataclass
class SimLan:
    """Real agents on the fakes above: one network, one mDNS bus, one swarm net, one mirror."""

    mirror: MemoryMirror
    lan_rate: float | None = 100 * MiB
    net: MemoryNetwork = field(default_factory=MemoryNetwork)
    mdns: MemoryMdns = field(default_factory=MemoryMdns)
    swarms: SwarmNet = field(init=False)
    _ips: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.swarms = SwarmNet(self.lan_rate)

    def outside(self) -> Any:
        from p2pmodel.services.agent import Outside

        n = next(self._ips)
        ip = f"10.0.{n // 250}.{n % 250 + 1}"
        return Outside(
            transport=self.net.transport(ip),
            swarm=self.swarms.factory(),
            discovery=self.mdns.factory(),
            http=self.mirror.client,
            interfaces=lambda: [ip],
        )
