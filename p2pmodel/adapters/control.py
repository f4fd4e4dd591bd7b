"""The control socket: how the CLI talks to a running ``p2pmodel serve``.

A Unix socket at ``$P2PMODEL_HOME/run/control.sock`` carries length-prefixed msgpack maps, the
messages of ``core.control``. The client sends one request; the agent answers ``status`` with
one map, ``get`` with progress maps four times a second, then one result or error map, and
the other requests with one result or error. This module is the framing and the client, in
plain blocking sockets (quick commands must not import trio); the agent's side is
``services.control``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from ..core.control import Answer, ControlProtocolError, Request, answer_from_wire
from ..core.errors import SourceError
from ..core.wire import FrameDecoder

_HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
PROGRESS_EVERY = 0.25


def socket_path(home: Path) -> Path:
    return home / "run" / "control.sock"


def pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(data)) + data


def unpack(data: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_FRAME, max_str_len=MAX_FRAME)
    if not isinstance(obj, dict):
        raise ValueError("control message is not a map")
    return obj


# -- client (blocking) -------------------------------------------------------------------------


class NoAgent(Exception):
    """No agent answers on this home's control socket."""


def request(home: Path, req: Request, timeout: float | None = None) -> Iterator[Answer]:
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
        sock.sendall(pack(req.to_wire()))
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SourceError("the local agent closed the connection")
            for frame in decoder.feed(chunk):
                try:
                    answer = answer_from_wire(unpack(frame))
                except (ValueError, ControlProtocolError) as e:
                    raise SourceError(f"the local agent answered garbage ({e})") from None
                yield answer
                if answer.last:
                    return
    finally:
        sock.close()


def ask(home: Path, req: Request, timeout: float | None = None) -> Answer:
    """One request, its one answer (``NoAgent`` when no agent runs)."""
    return next(iter(request(home, req, timeout)))
