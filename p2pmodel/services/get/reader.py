"""Reading one blob while it arrives, for the HF endpoint (trio).

A reader follows whichever download of the agent fetches the blob (``GetService.downloads``)
or the fetch the service started for readers (``Fetch``: many readers, one fetch). It gets
bytes as they reach the disk without a gap, but never the file's last ``HOLD`` bytes before
the blob matched its upstream digest; if the bytes it already had failed the digest, its read
raises ``BlobGone``, so the client's connection is cut short and no wrong file ever completes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ...core.errors import IntegrityError
from ...core.manifest import FileEntry

if TYPE_CHECKING:
    from .service import GetService

HOLD = 1024 * 1024  # the last bytes of a file a reader gets only once the blob is verified
READ = 1024 * 1024


class BlobGone(Exception):
    """The bytes a reader already had were thrown away (they failed the digest): the client
    must not get the rest of them as one file."""


@dataclass
class Fetch:
    """One fetch of one blob, started for readers."""

    digest: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    readers: int = 0


class BlobReader:
    """Bytes ``[start, stop)`` of one file, as they reach the disk (see the module docs)."""

    def __init__(
        self, gets: GetService, entry: FileEntry, start: int, stop: int, fetch: Fetch | None
    ) -> None:
        self.gets = gets
        self.entry = entry
        self.pos = start
        self.stop = stop
        self.fetch = fetch
        self._fd: int | None = None
        self._verified = False
        self._attempt: int | None = None

    async def read(self, most: int = READ) -> bytes:
        """The next bytes (``b""`` at the end). Raises ``BlobGone`` if bytes already read
        turned out wrong, or the error that ended the fetch."""
        store, digest, size = self.gets.store, self.entry.digest, self.entry.size
        while self.pos < self.stop:
            if not self._verified and store.has_blob(digest, size):
                self._verified = True
                self._reopen(store.blob_path(digest))
            if self._verified:
                return await self._pread(min(most, self.stop - self.pos))
            download = self.gets.downloads.get(digest)
            if download is not None and download.has(digest):
                attempt = download.attempt(digest)
                if self._attempt is not None and attempt != self._attempt:
                    raise BlobGone(f"{self.entry.path}: the bytes sent failed the digest")
                limit = download.frontier(digest, self.pos)
                if self.stop == size:
                    limit = min(limit, size - HOLD)  # the end waits for the digest
                if limit > self.pos:
                    if self._fd is None:
                        self._reopen(store.partial_path(digest))
                    self._attempt = attempt
                    self.gets._served[digest] = attempt
                    return await self._pread(min(most, limit - self.pos, self.stop - self.pos))
                with trio.move_on_after(1.0):  # also wakes if the blob was stored meanwhile
                    await download.landed.wait(None)
                continue
            fetch = self.fetch
            if fetch is not None and fetch.done.is_set():
                if fetch.error is not None:
                    raise fetch.error
                if not store.has_blob(digest, size):
                    raise IntegrityError(f"{self.entry.path}: the fetch ended without it")
                continue
            with trio.move_on_after(1.0):
                await self.gets._downloads_changed.wait()
        return b""

    def _reopen(self, path: Path) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(path, os.O_RDONLY)

    async def _pread(self, n: int) -> bytes:
        assert self._fd is not None
        data = await trio.to_thread.run_sync(os.pread, self._fd, n, self.pos)
        if not data:
            raise IntegrityError(f"{self.entry.path} ends before byte {self.pos}")
        self.pos += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
