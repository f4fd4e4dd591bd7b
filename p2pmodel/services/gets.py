"""``GetService``: runs gets for every front end and keeps what they share (trio).

Theory of operation. A front end (the CLI in its own process, the control socket of ``serve``;
next the Hugging Face endpoint and the dashboard) hands a ``GetRequest`` and a ``Progress`` to
``get`` and reads the progress while it runs. The service runs the get flow
(``services.get``) with what the agent keeps across gets: one HTTP client (its connection
pool), one ``MirrorBoard`` (mirror ranks, backoffs and bans for bad bytes survive from one get
to the next; mirrors given up on get another chance when a get starts), one ``TokenBucket``
for all mirror traffic (unlimited by default), and the get statistics, where mirror bytes are
counted as they arrive. Whatever goes wrong leaves ``get`` as the one error that says whose
fault it was (``core.errors.first_cause``), never as an exception group, so every front end
reports it the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from ..adapters.http import Timeouts, make_client
from ..core.config import Config
from ..core.errors import P2PModelError, first_cause
from ..core.mirrors import MirrorBoard
from ..core.progress import Progress
from ..core.stats import GetStats
from ..core.tokenbucket import TokenBucket
from .download import DownloadOptions
from .get import GetRequest, GetResult, LanSource, Sharing, get

HttpFactory = Callable[[], httpx.AsyncClient]


class GetService:
    def __init__(
        self,
        home: Path,
        config: Config,
        *,
        lan: LanSource | None = None,
        sharing: Sharing | None = None,
        http: HttpFactory | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.lan = lan
        self.sharing = sharing
        self.board = MirrorBoard()
        self.bucket = TokenBucket()
        self.stats = GetStats()
        self.running: dict[int, tuple[GetRequest, Progress]] = {}
        self._make_http = http
        self._http: httpx.AsyncClient | None = None
        self._ids = itertools.count(1)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[GetService]:
        """The service ready for gets (its HTTP client open) while inside."""
        connections = 2 * max(self.config.connections, 16)
        client = self._make_http() if self._make_http else make_client(Timeouts(), connections)
        async with client:
            self._http = client
            try:
                yield self
            finally:
                self._http = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.open():
            task_status.started()
            await trio.sleep_forever()

    async def get(
        self,
        req: GetRequest,
        progress: Progress | None = None,
        *,
        connections: int | None = None,
    ) -> GetResult:
        """Run one get. Raises the ``P2PModelError`` that says what went wrong (or an
        interrupt), never an exception group."""
        assert self._http is not None, "the get service is not open"
        progress = progress or Progress()
        key = next(self._ids)
        self.running[key] = (req, progress)
        self.stats.started += 1
        self.stats.running += 1
        t0 = trio.current_time()
        self.board.revive(t0)
        opts = DownloadOptions(
            connections=connections or self.config.connections,
            board=self.board,
            bucket=self.bucket,
            on_mirror_bytes=self.stats.mirror_bytes,
        )
        try:
            result = await get(
                req,
                self.home,
                options=opts,
                client=self._http,
                lan=self.lan,
                sharing=self.sharing,
                progress=progress,
                config=self.config,
            )
        except BaseException as e:
            cause = first_cause(e)
            if isinstance(cause, Exception):
                self.stats.failed += 1
                kind = type(cause).__name__ if isinstance(cause, P2PModelError) else "Bug"
                self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
            if cause is e:
                raise
            raise cause from None
        finally:
            self.stats.running -= 1
            del self.running[key]
        self.stats.completed += 1
        self.stats.durations.append(trio.current_time() - t0)
        return result

    def transfers(self) -> list[dict[str, Any]]:
        """Files of running gets still in flight (for ``status``)."""
        return [
            {
                "label": f.label,
                "size": f.size,
                "have": f.have,
                "state": f.state,
                "source": f.source,
            }
            for _, progress in self.running.values()
            for f in progress.files.values()
            if f.state not in ("done", "present")
        ]
