"""The control socket's agent side (messages: ``core.control``; framing and client:
``adapters.control``), started by ``Agent.run`` for ``serve``.

A get asked over the socket runs in ``GetService`` like any other; its progress goes back four
times a second, then one ``Done`` or ``Failed`` (the error's one line and exit code, the same
the CLI prints when it runs a get itself). A client that goes away (Ctrl-C on ``get``) cancels
its get; what was fetched is kept for the next one. A client must send its whole request
within ``REQUEST_TIMEOUT`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ..adapters.control import MAX_FRAME, PROGRESS_EVERY, pack, socket_path, unpack
from ..core.control import (
    Answer,
    BlobAsk,
    Done,
    Failed,
    GetAsk,
    ProgressReport,
    Request,
    StatusAnswer,
    StatusAsk,
    failed,
    request_from_wire,
)
from ..core.errors import P2PModelError, ProtocolError
from ..core.progress import Progress
from ..core.refs import parse_ref
from ..core.wire import FrameDecoder
from .get import GetRequest
from .get.service import GetService

log = logging.getLogger(__name__)
Op = Callable[[Any], Awaitable[dict[str, Any]]]
REQUEST_TIMEOUT = 10.0


class ControlServer:
    def __init__(
        self,
        home: Path,
        gets: GetService,
        status: Callable[[], dict[str, Any]],
        ops: Mapping[str, Op] | None = None,
    ) -> None:
        self.path = socket_path(home)
        self.gets = gets
        self.status = status
        self.ops = dict(ops or {})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a dead agent (serve refuses to run twice)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self.handle, [listener])
                task_status.started()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    req = request_from_wire(await self._receive(stream))
            except ProtocolError as e:
                await stream.send_all(pack(failed(e).to_wire()))
                return
            if isinstance(req, StatusAsk):
                await self._send(stream, StatusAnswer(self.status()))
            elif isinstance(req, GetAsk):
                await self._get(stream, req)
            elif isinstance(req, BlobAsk):
                await self._blob(stream, req)
            elif req.op in self.ops:
                await self._send(stream, await self._op(req))
            else:
                await self._send(stream, Failed(f"bad op {req.op!r}", 2))
        # A client that goes away (Ctrl-C on `get`), stalls or sends garbage ends its own
        # connection, never the agent; a bug in answering one request is logged, and the
        # agent serves on.
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except* (ValueError, ProtocolError):
            pass
        except* Exception:
            log.exception("control request failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _send(self, stream: trio.SocketStream, answer: Answer) -> None:
        await stream.send_all(pack(answer.to_wire()))

    async def _op(self, req: Request) -> Answer:
        try:
            return Done(await self.ops[req.op](req))
        except P2PModelError as e:
            return failed(e)
        except Exception as e:  # a bug of ours: the client still gets one line
            log.exception("control op %r failed", req.op)
            return Failed(f"internal error in the agent: {e!r}", 70)

    async def _receive(self, stream: trio.SocketStream) -> dict[str, Any]:
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                raise ValueError("closed before a request")
            frames = decoder.feed(chunk)
            if frames:
                return unpack(frames[0])

    async def _get(self, stream: trio.SocketStream, ask: GetAsk) -> None:
        async def run(progress: Progress) -> Done:
            req = get_request(ask)
            result = await self.gets.get(req, progress)
            return Done(result.describe(req.ref.text), tuple(result.warnings))

        await self._streamed(stream, run, f"get {ask.ref!r}")

    async def _blob(self, stream: trio.SocketStream, ask: BlobAsk) -> None:
        """One blob by digest (``p2pmodel git lfs-agent``): peers, the office's shared
        fetch, then the given URLs; answered with the stored blob's path."""

        async def run(progress: Progress) -> Done:
            headers = dict(zip(ask.urls, ask.headers, strict=False))
            path = await self.gets.fetch_blob(
                ask.digest, ask.size, list(ask.urls), headers, progress, keep_as=ask.keep_as
            )
            return Done({"path": str(path), "digest": ask.digest, "size": ask.size})

        await self._streamed(stream, run, f"blob {ask.digest}")

    async def _streamed(
        self,
        stream: trio.SocketStream,
        work: Callable[[Progress], Awaitable[Done]],
        what: str,
    ) -> None:
        """Run ``work``, sending its progress four times a second, then its one answer."""
        progress = Progress()
        outcome: list[Answer] = []
        done = trio.Event()

        async def run() -> None:
            try:
                outcome.append(await work(progress))
            except P2PModelError as e:
                outcome.append(failed(e))
            except Exception as e:  # a bug of ours: the client still gets one line
                log.exception("%s failed", what)
                outcome.append(Failed(f"internal error in the agent: {e!r}", 70))
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while not done.is_set():
                await self._send(stream, progress_report(progress))
                with trio.move_on_after(PROGRESS_EVERY):
                    await done.wait()
            await self._send(stream, progress_report(progress))
            await self._send(stream, outcome[0])


def get_request(ask: GetAsk) -> GetRequest:
    """The get a client asked for (``UserError`` for a bad reference)."""
    return GetRequest(
        parse_ref(ask.ref),
        to=Path(ask.to) if ask.to else None,
        hf_cache=Path(ask.hf_cache) if ask.hf_cache else None,
        sha256=ask.sha256,
        refresh=ask.refresh,
    )


def progress_report(p: Progress) -> ProgressReport:
    return ProgressReport(
        p.from_mirrors,
        p.from_peers,
        tuple((k, f.label, f.size, f.have, f.source, f.state) for k, f in p.files.items()),
    )
