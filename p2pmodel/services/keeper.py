"""``StoreKeeper``: keeps the agent's store under its cap, and removes models for ``rm``/``gc``
(trio).

Theory of operation. What leaves the store is decided by ``core.retention`` from what the store
adapter reads (refs, manifests, last use, pins, blob and partial sizes) and what only the agent
knows: the refs and blobs of running gets (``GetService.in_use``) and the blobs a peer is
fetching from us (``SwarmService.uploading``). One collection runs at a time:

1. plan (in a thread, reading only);
2. stop seeding the blobs the plan deletes; any a peer connected for meanwhile stays;
3. plan again under the store lock and delete only blobs of both plans that were unseeded: a
   get that recorded its ref in between keeps what it names;
4. seed again what was unseeded but kept.

The keeper collects when the agent starts, at the end of every get, before the get returns (a
get is what grows the store; the model it fetched is kept by that collection even if the cap is
still exceeded), and when a
reloaded config changes the cap; ``rm`` and ``gc`` from the control socket run the
same collection. Every get runs in an agent (``--no-lan``: one with the LAN off), so the cap
holds alike however a get ran; ``rm``/``gc`` without a running agent run the store adapter's
``collect`` alone (no get or peer of this agent can be using the store then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ..adapters.store import Store
from ..core.errors import P2PModelError, UserError
from ..core.retention import Collected
from .swarm import SwarmService

log = logging.getLogger(__name__)


class StoreKeeper:
    def __init__(
        self,
        store: Store,
        cap: int | None,
        *,
        in_use: Callable[[], tuple[set[str], set[str]]],
        swarm: SwarmService | None = None,
    ) -> None:
        self.store = store
        self.cap = cap
        self.in_use = in_use
        self.swarm = swarm
        self.last: Collected | None = None
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._fresh: set[str] = set()

    async def got(self, ref: str) -> str | None:
        """A get of ``ref`` ended: the store may have grown, so the cap is checked before the
        get returns (``GetService.after_get``, whichever front end ran it). The model just
        fetched is not evicted by that check (the user asked for it a moment ago).
        Returns a warning for the get's user when the store stays over its cap."""
        if self.cap is None:
            return None
        self._fresh.add(ref)
        try:
            done = await self.collect()
        except (OSError, P2PModelError) as e:  # the get itself succeeded: say so, go on
            log.warning("keeping the store under its cap failed: %s", e)
            return f"keeping the store under its cap failed: {e}"
        return over_cap(done.plan.size_after, self.cap) if done.plan.over_cap else None

    def wake(self) -> None:
        self._wake.set()

    def set_cap(self, cap: int | None) -> None:
        if cap != self.cap:
            self.cap = cap
            self.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.cap is not None:
                try:
                    await self.collect()
                except (OSError, P2PModelError) as e:  # a full disk must not stop the agent
                    log.warning("keeping the store under its cap failed: %s", e)
            await self._wake.wait()
            self._wake = trio.Event()

    def _busy(self) -> tuple[set[str], set[str]]:
        refs, blobs = self.in_use()
        refs |= self._fresh
        if self.swarm is not None:
            blobs |= self.swarm.uploading()
        return refs, blobs

    async def remove(self, ref: str) -> Collected:
        """``rm REF``: the model leaves the store, and the blobs no other model needs."""
        refs = await trio.to_thread.run_sync(self.store.refs)
        if ref not in refs:
            raise UserError(f"{ref} is not in the store (see p2pmodel ls)")
        if ref in await trio.to_thread.run_sync(self.store.pins):
            raise UserError(f"{ref} is pinned (p2pmodel unpin {ref} first)")
        if ref in self.in_use()[0]:
            raise UserError(f"a get of {ref} is running; remove it when it is done")
        return await self.collect(drop=(ref,), cap=False)

    async def collect(self, drop: tuple[str, ...] = (), *, cap: bool = True) -> Collected:
        """Evict what the cap (unless ``cap`` is False) and ``drop`` ask, and delete what no
        kept model needs."""
        async with self._lock:
            fresh = set(self._fresh)
            refs, blobs = self._busy()
            kw: dict[str, Any] = {"cap": self.cap if cap else None, "drop": drop}
            first = await trio.to_thread.run_sync(
                lambda: self.store.plan_collection(**kw, busy_refs=refs, busy_blobs=blobs)
            )
            unseeded: set[str] | None = None
            if self.swarm is not None:
                unseeded = set(first.delete) - set(self.swarm.unseed(first.delete))
            refs, blobs = self._busy()
            plan, deleted = await trio.to_thread.run_sync(
                lambda: self.store.collect(
                    **kw, busy_refs=refs, busy_blobs=blobs, deletable=unseeded
                )
            )
            if unseeded and self.swarm is not None:
                again = unseeded - set(deleted)
                sizes = await trio.to_thread.run_sync(_sizes, self.store, again)
                for digest, size in sizes.items():
                    self.swarm.stored(digest, size)
        if plan.evict or deleted:
            log.info(
                "store: evicted %s; deleted %d blobs (%d bytes), %d bytes kept",
                ", ".join(plan.evict) or "nothing",
                len(deleted),
                plan.freed,
                plan.size_after,
            )
        if plan.over_cap and self.cap is not None:
            log.warning("%s", over_cap(plan.size_after, self.cap))
        self._fresh -= fresh
        self.last = Collected(plan, deleted, self.cap)
        return self.last


def over_cap(size: int, cap: int) -> str:
    return f"store holds {size} bytes, over its cap of {cap}: the rest is pinned or in use"


def _sizes(store: Store, digests: set[str]) -> dict[str, int]:
    out = {}
    for d in digests:
        try:
            out[d] = store.blob_path(d).stat().st_size
        except OSError:
            continue
    return out
