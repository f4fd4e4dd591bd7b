"""The control socket's agent side: ``status`` and ``get`` for a running ``p2pmodel serve``,
and the agent's other operations (``rm``, ``gc``, ``mirrors``: one request, one ``result`` or
``error`` frame) (framing and client: ``adapters.control``).

A get asked over the socket runs in ``GetService`` like any other; its progress goes back four
times a second, then one ``result`` or ``error`` frame (the error's one line and exit code, the
same the CLI prints when it runs a get itself). A client that goes away (Ctrl-C on ``get``)
cancels its get; what was fetched is kept for the next one.
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
from ..core.errors import P2PModelError, ProtocolError, UserError
from ..core.progress import Progress
from ..core.refs import parse_ref
from ..core.wire import FrameDecoder
from .get import GetRequest
from .gets import GetService

log = logging.getLogger(__name__)
Op = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(
        self,
        home: Path,
        gets: GetService,
        status: Callable[[], dict[str, Any]],
        after_get: Callable[[], None] = lambda: None,
        ops: Mapping[str, Op] | None = None,
    ) -> None:
        self.path = socket_path(home)
        self.gets = gets
        self.status = status
        self.after_get = after_get
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
            req = await self._receive(stream)
            op = req.get("op")
            if op == "status":
                await stream.send_all(pack({"event": "status", **self.status()}))
            elif op == "get":
                await self._get(stream, req)
            elif isinstance(op, str) and op in self.ops:
                await stream.send_all(pack(await self._op(op, req)))
            else:
                await stream.send_all(
                    pack({"event": "error", "message": f"bad op {op!r}", "code": 2})
                )
        # A client that goes away (Ctrl-C on `get`) or sends garbage ends its own connection,
        # never the agent; a bug in answering one request is logged, and the agent serves on.
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, ProtocolError):
            pass
        except* Exception:
            log.exception("control request failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _op(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"event": "result", **await self.ops[op](req)}
        except P2PModelError as e:
            return {"event": "error", "message": str(e), "code": e.exit_code}
        except Exception as e:  # a bug of ours: the client still gets one line
            log.exception("control op %r failed", op)
            return {"event": "error", "message": f"internal error in the agent: {e!r}", "code": 70}

    async def _receive(self, stream: trio.SocketStream) -> dict[str, Any]:
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                raise ValueError("closed before a request")
            frames = decoder.feed(chunk)
            if frames:
                return unpack(frames[0])

    async def _get(self, stream: trio.SocketStream, req: dict[str, Any]) -> None:
        progress = Progress()
        outcome: dict[str, Any] = {}
        done = trio.Event()

        async def run() -> None:
            try:
                greq = _get_request(req)
                result = await self.gets.get(greq, progress)
                outcome.update(
                    event="result", warnings=result.warnings, **result.describe(greq.ref.text)
                )
            except P2PModelError as e:
                outcome.update(event="error", message=str(e), code=e.exit_code)
            except Exception as e:  # a bug of ours: the client still gets one line
                log.exception("get %r failed", req.get("ref"))
                outcome.update(
                    event="error", message=f"internal error in the agent: {e!r}", code=70
                )
            finally:
                done.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                while not done.is_set():
                    await stream.send_all(pack(_progress_frame(progress)))
                    with trio.move_on_after(PROGRESS_EVERY):
                        await done.wait()
                await stream.send_all(pack(_progress_frame(progress)))
                await stream.send_all(pack(outcome))
        finally:
            self.after_get()


def _get_request(req: dict[str, Any]) -> GetRequest:
    """A get request from a client's map; ``UserError`` if a field is missing or mistyped."""
    ref, to, cache, sha = (req.get(k) for k in ("ref", "to", "hf_cache", "sha256"))
    if not isinstance(ref, str):
        raise UserError("a get request needs a 'ref' string")
    for name, value in (("to", to), ("hf_cache", cache), ("sha256", sha)):
        if value is not None and not isinstance(value, str):
            raise UserError(f"a get request's {name!r} must be a string")
    return GetRequest(
        parse_ref(ref),
        to=Path(to) if to else None,
        hf_cache=Path(cache) if cache else None,
        sha256=sha,
        refresh=bool(req.get("refresh")),
        progress="none",
    )


def _progress_frame(p: Progress) -> dict[str, Any]:
    return {
        "event": "progress",
        "from_mirrors": p.from_mirrors,
        "from_peers": p.from_peers,
        "files": [[k, f.label, f.size, f.have, f.source, f.state] for k, f in p.files.items()],
    }
