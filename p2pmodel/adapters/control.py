"""The control socket: how ``get`` and ``status`` talk to a running ``p2pmodel serve``.

A Unix socket at ``$P2PMODEL_HOME/run/control.sock`` carries length-prefixed msgpack maps. The
client sends one request (``{"op": "status"}`` or ``{"op": "get", ...}``); the agent answers
``status`` with one map, and ``get`` with progress maps four times a second, then one
``result`` or ``error`` map. This module is the framing and the client, in plain blocking
sockets (quick commands must not import trio); the agent's side is ``services.control``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

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
        sock.sendall(pack(req))
        decoder = FrameDecoder(MAX_FRAME)
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise SourceError("the local agent closed the connection")
            for frame in decoder.feed(chunk):
                msg = unpack(frame)
                yield msg
                if msg.get("event") in ("result", "error", "status"):
                    return
    finally:
        sock.close()
