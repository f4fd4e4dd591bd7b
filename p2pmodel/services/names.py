"""Names from the office (trio): what ``team-model:v3`` stands for, asked of keyed peers.

Theory of operation. A manifest says which digests make up a model; whoever can change it
decides what a workstation runs, so manifests are believed only from trusted sources. With an
office key a peer has proved over mutual TLS that it holds the key, and the office trusts its
own: ``resolve`` asks every live peer at once (``resolve?``, bounded in time) for the manifest
it holds under a reference, and ``answer`` answers peers' questions from the store. Without a
key nothing is asked and nothing is told.

What a peer sends is still checked: the manifest must parse by the rules (paths that escape
the model directory, duplicates, bad digests are refused, and the peer is distrusted for that
reference, which ``status`` shows), the caller's ``accept`` must take it (a config or catalog
name must get the source and commit they pin), and every file is checked against its digest
when it arrives, as always. Peers may disagree (a tag published again with ``--force``): the
newest publication wins, otherwise the manifest most peers hold.

``publish`` offers a manifest the CLI stored (``services.publish``) under a name: refused if
the office already knows the name with other content (unless forced), then recorded and its
blobs seeded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..adapters.store import Store
from ..core.errors import UserError
from ..core.manifest import Manifest, ManifestError, is_published
from ..core.refs import parse_ref
from ..core.wire import Message, PeerProtocolError, Resolved, ResolveQuery
from .get.flow import find_pinned
from .link import RpcError
from .peers import PeerService

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Answer:
    """A manifest a keyed peer holds under a reference."""

    manifest: Manifest
    peer: str


def best(answers: list[Answer]) -> Answer | None:
    """The answer to believe: the newest publication (its commit is the time it was
    published), else the manifest most peers hold, ties broken by digest."""
    if not answers:
        return None
    votes = Counter(a.manifest.digest for a in answers)

    def rank(a: Answer) -> tuple[str, int, str]:
        when = a.manifest.commit if is_published(a.manifest) else ""
        return (when, votes[a.manifest.digest], a.manifest.digest)

    return max(answers, key=rank)


class NameService:
    def __init__(
        self,
        peers: PeerService,
        store: Store,
        *,
        keyed: bool,
        wait_for_peers: float = 0.0,
        timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.peers = peers
        self.store = store
        self.keyed = keyed
        self.wait_for_peers = wait_for_peers
        self.timeout = timeout
        peers.route([ResolveQuery], self.answer)

    # -- peers' questions --------------------------------------------------------------------

    async def answer(self, msg: ResolveQuery, agent: str) -> Message:
        if not self.keyed:
            return Resolved(msg.ref)  # an open office tells no names
        manifest = await trio.to_thread.run_sync(self._lookup, msg.ref)
        return Resolved(msg.ref, manifest.to_bytes() if manifest is not None else b"")

    def _lookup(self, text: str) -> Manifest | None:
        try:
            ref = parse_ref(text)
        except UserError:
            return None
        if ref.kind in ("hf", "ms"):
            return find_pinned(self.store, ref)
        return self.store.lookup(ref.text)

    # -- asking the office -------------------------------------------------------------------

    async def answers(self, text: str) -> list[Answer]:
        """Every keyed peer's manifest for reference ``text`` (asked now, bounded in time)."""
        if not self.keyed:
            return []
        if self.wait_for_peers:
            await self.peers.wait_seen(self.wait_for_peers)
        got: list[Answer] = []

        async def ask(agent: str) -> None:
            try:
                reply = await self.peers.request(agent, ResolveQuery(text))
            except (RpcError, PeerProtocolError):
                return
            if not isinstance(reply, Resolved) or not reply.manifest:
                return
            try:
                manifest = Manifest.from_bytes(reply.manifest)
            except ManifestError as e:
                log.warning("peer %s sent a bad manifest for %s: %s", agent, text, e)
                self.peers.distrust(agent, text, f"sent a manifest that breaks the rules: {e}")
                return
            got.append(Answer(manifest, agent))

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for agent in sorted(self.peers.alive_ids()):
                    nursery.start_soon(ask, agent)
        return [a for a in got if self.peers.trusted(a.peer, text)]

    async def resolve(
        self, text: str, accept: Callable[[Manifest], bool] = lambda m: True
    ) -> Answer | None:
        """The manifest the office holds under ``text`` that ``accept`` takes, if any."""
        return best([a for a in await self.answers(text) if accept(a.manifest)])

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, name: str, manifest: Manifest, force: bool, on_stored: Callable[[str, int], None]
    ) -> None:
        """Offer ``manifest`` (stored, with its blobs) to the office as ``name``. A
        ``UserError`` if a peer holds the name with other content and ``force`` is off."""
        if not force:
            for a in await self.answers(name):
                if a.manifest.files != manifest.files:
                    raise UserError(
                        f"{name} is already published in the office with other content (peer "
                        f"{a.peer}, manifest {a.manifest.digest[:19]}); --force replaces it"
                    )
        await trio.to_thread.run_sync(self.store.set_ref, name, manifest.digest)
        for digest, size in manifest.blobs().items():
            on_stored(digest, size)
