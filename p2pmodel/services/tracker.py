"""The office's tracker as a directory of agents (trio): announce, then say hello to who is there.

Theory of operation. ``TrackerService.run`` announces the office's rendezvous info-hash
(``core.tracker``) with the agent's peer-link port to each tracker the agent uses (its config's,
else those peers told of: ``PeerService.trackers``), as ``core.tracker.Schedule`` says: at once
at start, when the trackers change and when the agent's addresses change (``moved``), then at
the tracker's interval, sooner after a failure. Every address a tracker returns goes to
``PeerService.add_candidates`` (source ``tracker``): a hello there proves an agent or costs one
failed hello. A newcomer so meets those already there at once, and they meet it through its
hello, without waiting half an hour for their own next announce. On the way out the agent says
``stopped`` to each tracker (bounded in time). The tracker learns the hash, the agent's address
and port, and a random peer id made at each start; nothing else.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from ..core.officekey import OfficeKey
from ..core.peers import PeerAddr, PeerSource
from ..core.tracker import Schedule, TrackerError, announce_url, parse_announce, rendezvous

log = logging.getLogger(__name__)
STOP_TIMEOUT = 2.0


class TrackerGet(Protocol):
    """One announce over HTTP (``adapters.tracker.TrackerHttp``, or a fake)."""

    async def get(self, url: str) -> bytes: ...

    async def aclose(self) -> None: ...


class Directory(Protocol):
    """What the service needs of ``PeerService``."""

    rpc_port: int

    def trackers(self) -> tuple[str, ...]: ...

    def watch_trackers(self, fn: Callable[[], None]) -> None: ...

    def add_candidates(self, addrs: Sequence[PeerAddr], source: PeerSource) -> int: ...


class TrackerService:
    def __init__(
        self, peers: Directory, key: OfficeKey | None, http: Callable[[], TrackerGet]
    ) -> None:
        self.peers = peers
        self.info_hash = rendezvous(key)
        self.peer_id = b"-P2PM01-" + secrets.token_bytes(12)
        self._http = http
        self.schedule = Schedule()
        self._wake = trio.Event()
        self.announces = 0
        self.failures = 0
        self.candidates = 0  # addresses the trackers returned, ours and known ones left out
        self.last_error: str | None = None
        peers.watch_trackers(self._trackers_changed)

    def moved(self) -> None:
        """The agent's addresses changed: announce again at once."""
        self.schedule.moved(trio.current_time())
        self._wake.set()

    def _trackers_changed(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        http: TrackerGet | None = None  # made at the first announce: most offices have none
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    now = trio.current_time()
                    self.schedule.set_urls(self.peers.trackers(), now)
                    for url in self.schedule.due(now):
                        http = http or self._http()
                        nursery.start_soon(self._announce, http, url, None)
                    deadline = self.schedule.next_deadline()
                    with trio.move_on_at(deadline if deadline is not None else math.inf):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            if http is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        for url in self.schedule.urls():
                            nursery.start_soon(self._announce, http, url, "stopped")
                with trio.CancelScope(shield=True):
                    await http.aclose()

    async def _announce(self, http: TrackerGet, url: str, event: str | None) -> None:
        query = announce_url(url, self.info_hash, self.peer_id, self.peers.rpc_port, event=event)
        try:
            answer = parse_announce(await http.get(query))
        except TrackerError as e:
            if event is not None:
                return
            self.failures += 1
            self.last_error = f"{url}: {e}"
            retry = self.schedule.failed(url, trio.current_time()) - trio.current_time()
            log.warning("tracker %s: %s (again in %.0f s)", url, e, retry)
        else:
            if event is not None:
                return
            self.announces += 1
            self.last_error = None
            self.schedule.succeeded(url, trio.current_time(), answer.interval)
            addrs = [PeerAddr(ip, port) for ip, port in answer.peers]
            self.candidates += self.peers.add_candidates(addrs, "tracker")
            log.info("tracker %s: %d agent(s) there", url, len(addrs))
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "trackers": self.schedule.snapshot(trio.current_time()),
            "announces": self.announces,
            "failures": self.failures,
            "candidates": self.candidates,
            "last_error": self.last_error,
        }
