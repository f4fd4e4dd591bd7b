"""What the store keeps (pure): which models to evict and which blobs to delete.

Theory of operation. A *model* is a reference in the store (``qwen-image:v1.0``,
``hf://org/repo@rev``) with the blobs of its manifest, when it was last used and whether it is
pinned. ``plan`` decides, from plain data, what leaves the store:

1. the refs the user removes (``rm``) go;
2. while the store is over its cap, the least recently used model that is neither pinned nor
   being fetched by a running get goes, then the next;
3. a blob is deleted when no kept model references it and it is not busy (a running get works
   on it, or a peer is fetching it from us); a busy one stays until a later collection;
4. a model evicted for the cap whose eviction freed nothing (all its blobs shared with kept
   models, or busy) is kept after all: it cost no space.

Sizes count verified blobs and the partial files of downloads (``extra``): both take disk. The
store adapter gathers the data and does the deleting; nothing here touches a file or a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Model:
    ref: str
    blobs: frozenset[str]  # digests of its manifest (present or not)
    last_use: float  # seconds since the epoch
    pinned: bool = False


@dataclass(frozen=True)
class Plan:
    evict: tuple[str, ...]  # refs that leave the store, in the order chosen
    delete: tuple[str, ...]  # blobs to delete (sorted)
    kept_busy: tuple[str, ...]  # blobs no kept model needs, kept because in use now
    freed: int  # bytes the deletions free
    size_after: int  # bytes the store holds afterwards
    over_cap: bool  # still above the cap: pinned or busy models hold the rest


@dataclass
class _State:
    models: dict[str, Model]
    blobs: Mapping[str, int]
    busy: frozenset[str]
    kept: set[str] = field(default_factory=set)

    def garbage(self) -> set[str]:
        needed: set[str] = set()
        for ref in self.kept:
            needed |= self.models[ref].blobs
        return {b for b in self.blobs if b not in needed}


def plan(
    models: Iterable[Model],
    blobs: Mapping[str, int],
    *,
    cap: int | None = None,
    drop: Iterable[str] = (),
    busy_refs: Iterable[str] = (),
    busy_blobs: Iterable[str] = (),
    extra: int = 0,
) -> Plan:
    """What to evict and delete. ``blobs``: every verified blob on disk (digest -> size);
    ``drop``: refs removed by the user; ``busy_*``: what running gets and peers use now;
    ``extra``: bytes on disk that are not blobs (partial downloads)."""
    state = _State({m.ref: m for m in models}, blobs, frozenset(busy_blobs))
    dropped = [r for r in dict.fromkeys(drop) if r in state.models]
    state.kept = set(state.models) - set(dropped)
    total = sum(blobs.values()) + extra

    def size_now() -> int:
        return total - sum(blobs[b] for b in state.garbage() - state.busy)

    evicted: list[str] = []
    if cap is not None:
        protected = set(busy_refs)
        candidates = sorted(
            (m for m in state.models.values() if m.ref in state.kept),
            key=lambda m: (m.last_use, m.ref),
        )
        for m in candidates:
            if size_now() <= cap:
                break
            if m.pinned or m.ref in protected:
                continue
            state.kept.discard(m.ref)
            evicted.append(m.ref)
        deleted = state.garbage() - state.busy
        for ref in reversed(evicted):  # freed nothing: keep it after all
            if not state.models[ref].blobs & deleted:
                state.kept.add(ref)
                evicted.remove(ref)
    garbage = state.garbage()
    delete = sorted(garbage - state.busy)
    freed = sum(blobs[b] for b in delete)
    return Plan(
        evict=(*dropped, *evicted),
        delete=tuple(delete),
        kept_busy=tuple(sorted(garbage & state.busy)),
        freed=freed,
        size_after=total - freed,
        over_cap=cap is not None and total - freed > cap,
    )


@dataclass(frozen=True)
class Shared:
    """Blobs one model has in common with another (``ls``)."""

    ref: str
    blobs: int
    bytes: int


def shared(models: Iterable[Model], sizes: Mapping[str, int]) -> dict[str, list[Shared]]:
    """For each model, the other models it shares blobs with (what ``rm`` would not free)."""
    ms = sorted(models, key=lambda m: m.ref)
    out: dict[str, list[Shared]] = {m.ref: [] for m in ms}
    for i, a in enumerate(ms):
        for b in ms[i + 1 :]:
            common = a.blobs & b.blobs
            if common:
                n = sum(sizes.get(d, 0) for d in common)
                out[a.ref].append(Shared(b.ref, len(common), n))
                out[b.ref].append(Shared(a.ref, len(common), n))
    return out


@dataclass
class Collected:
    """What one collection did (``rm``, ``gc``, the cap): ``describe`` is what the CLI shows,
    the same with and without a running agent."""

    plan: Plan
    deleted: list[str]
    cap: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "evicted": list(self.plan.evict),
            "deleted": len(self.deleted),
            "freed": self.plan.freed,
            "kept_in_use": list(self.plan.kept_busy),
            "size": self.plan.size_after,
            "cap": self.cap,
            "over_cap": self.plan.over_cap,
        }
