"""Mirror bodies read through the socket's receive low-water mark (``adapters.http``): raised
while a body streams, never above what the body still owes (its end is never waited for), and
back at 1 when it ends, so the connection returns to the pool and serves the next request."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from p2pmodel.adapters.http import LOWAT, make_client, open_range
from p2pmodel.testing.models import make_single_file

from .conftest import MiB


def _marks(client: Any) -> list[int]:
    """SO_RCVLOWAT of every connection in the client's pool."""
    out = []
    for conn in client._transport._pool.connections:
        sock = conn._connection._network_stream.get_extra_info("socket")
        out.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))
    return out


async def test_range_bodies_end_and_the_connection_is_reused(tmp_path: Path, start_mirror) -> None:
    f = make_single_file(tmp_path, "blob.bin", 3 * MiB + 12345, seed=7)
    mirror = await start_mirror(singles={"/rel/blob.bin": f})
    url = f"{mirror.hub_url}/rel/blob.bin"
    data = f.data_path.read_bytes()
    async with make_client() as client:
        # A body shorter than the mark, one spanning many marks, one that ends off a mark.
        for start, stop in [(0, 1000), (5, 2 * MiB + 7), (MiB, f.size)]:
            got, seen = bytearray(), set()
            with trio.fail_after(20):  # an end that waited for bytes never sent would hang
                async with open_range(client, url, start, stop, f.size) as body:
                    async for chunk in body.chunks:
                        got += chunk
                        seen.update(_marks(client))
            assert bytes(got) == data[start:stop]
            assert max(seen) <= min(LOWAT, stop - start), (start, stop, seen)
            if stop - start > 2 * LOWAT:  # (a short body may come whole with the headers)
                assert LOWAT in seen, seen
            assert _marks(client) == [1]  # one connection, reused, mark back at 1
