"""The control socket: how ``get`` and ``status`` talk to a running ``p2pmodel serve``.

A Unix socket at ``$P2PMODEL_HOME/run/control.sock`` carries length-prefixed msgpack maps. The
client sends one request (``{"op": "status"}`` or ``{"op": "get", ...}``); the agent answers
``status`` with one map, and ``get`` with progress maps four times a second, then one
``result`` or ``error`` map. The client side is plain blocking sockets: quick commands must not
import trio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from ..core.errors import P2PModelError, ProtocolError, SourceError
from ..core.wire import FrameDecoder

if TYPE_CHECKING:
    import trio

    from ..services.agent import Agent

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
PROGRESS_EVERY = 0.25


def socket_path(home: Path) -> Path:
    return home / "run" / "control.sock"


def _pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(data)) + data


def _unpack(data: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_FRAME, max_str_len=MAX_FRAME)
    if not isinstance(obj, dict):
        raise ValueError("control message is not a map")
    return obj


# -- client (blocking) -------------------------------------------------------------------------


class NoAgent(Exception):
    """No agent answers on this home's control socket."""


def request(
    home: Path, req: dict[str, Any], timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """Send one request to the local agent and yield its answers until the last one."""
    path = socket_path(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError as e:
            raise NoAgent(str(e)) from None
        sock.settimeout(timeout)
        sock.sendall(_pack(req))
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SourceError("the local agent closed the connection")
            for frame in decoder.feed(chunk):
                msg = _unpack(frame)
                yield msg
                if msg.get("event") in ("result", "error", "status"):
                    return
    finally:
        sock.close()


# -- server (trio, inside the agent) ----------------------------------------------------------


class ControlServer:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.path = socket_path(agent.home)

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        import trio

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
        import trio

        try:
            req = await self._receive(stream)
            op = req.get("op")
            if op == "status":
                await stream.send_all(_pack({"event": "status", **self.agent.status()}))
            elif op == "get":
                await self._get(stream, req)
            else:
                await stream.send_all(
                    _pack({"event": "error", "message": f"bad op {op!r}", "code": 2})
                )
        # except*: a get's errors come out of its nursery wrapped in an ExceptionGroup. A client
        # that goes away (Ctrl-C on `get`) or sends garbage ends its own connection, never the
        # agent; a bug in answering one request is logged, and the agent serves on.
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ValueError, ProtocolError):
            pass
        except* Exception:
            log.exception("control request failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _receive(self, stream: trio.SocketStream) -> dict[str, Any]:
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                raise ValueError("closed before a request")
            frames = decoder.feed(chunk)
            if frames:
                return _unpack(frames[0])

    async def _get(self, stream: trio.SocketStream, req: dict[str, Any]) -> None:
        import trio

        from ..core.progress import Progress
        from ..core.refs import parse_ref
        from ..services.get import GetRequest, get

        progress = Progress()
        key = f"get-{id(progress)}"
        self.agent.transfers[key] = progress
        outcome: dict[str, Any] = {}
        done = trio.Event()

        async def run() -> None:
            try:
                to = req.get("to")
                greq = GetRequest(
                    parse_ref(str(req["ref"])),
                    to=Path(to) if to else None,
                    sha256=req.get("sha256"),
                    refresh=bool(req.get("refresh")),
                    progress="none",
                )
                result = await get(greq, self.agent.home, lan=self.agent, progress=progress)
                self.agent.from_mirrors += result.fetched
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
                    await stream.send_all(_pack(_progress_frame(progress)))
                    with trio.move_on_after(PROGRESS_EVERY):
                        await done.wait()
                await stream.send_all(_pack(_progress_frame(progress)))
                await stream.send_all(_pack(outcome))
        finally:
            self.agent.transfers.pop(key, None)
            from ..services.agent import trim_memory

            trim_memory()


def _progress_frame(p: Any) -> dict[str, Any]:
    return {
        "event": "progress",
        "from_mirrors": p.from_mirrors,
        "from_peers": p.from_peers,
        "files": [[k, f.label, f.size, f.have, f.source, f.state] for k, f in p.files.items()],
    }
