"""Reading one blob while it arrives, for the HF endpoint (trio).

A stored blob is read whole pieces at a time, each checked against the blob's torrent piece
hashes before any of its bytes leave (``StoredPieces``): a blob that rotted on disk since it
was verified is cut short at the bad piece, never sent as a complete file, and reported to
``GetService.rotten`` (dropped from seeding and from the store; the next read fetches it
again). A blob with no saved torrent info of ours is checked against its digest whole when it
is small, else sent unchecked (and logged).

A reader follows whichever download of the agent fetches the blob (``GetService.downloads``)
or the fetch the service started for readers (``Fetch``: many readers, one fetch). It gets
bytes as they reach the disk without a gap, but never the file's last ``HOLD`` bytes before
the blob matched its upstream digest; if the bytes it already had failed the digest, its read
raises ``BlobGone``, so the client's connection is cut short and no wrong file ever completes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ...core.digests import algorithm, digest_bytes
from ...core.errors import IntegrityError
from ...core.manifest import FileEntry
from ...core.torrents import bad_piece, piece_length_of, pieces_of

if TYPE_CHECKING:
    from .service import GetService

log = logging.getLogger(__name__)
HOLD = 1024 * 1024  # the last bytes of a file a reader gets only once the blob is verified
READ = 1024 * 1024
WHOLE = 16 * 1024 * 1024  # a stored blob without torrent info: checked whole up to this size


class BlobRotten(IntegrityError):
    """A stored blob's bytes no longer match what was verified (the disk changed them)."""


class StoredPieces:
    """A stored blob read piece by piece, each piece checked before it is handed out."""

    def __init__(self, fd: int, entry: FileEntry, info: bytes | None) -> None:
        self.fd = fd
        self.entry = entry
        self.hashes = pieces_of(info) if info is not None else b""
        self.piece = (piece_length_of(info) if info is not None else None) or 0
        count = -(-entry.size // self.piece) if self.piece else 0
        if not self.piece or len(self.hashes) != 20 * count:
            # No torrent info of this blob: check it whole when small; else read it unchecked,
            # a block at a time (never the whole file in memory).
            self.hashes = b""
            self.piece = max(entry.size, 1) if entry.size <= WHOLE else READ
        self.index = -1
        self.data = b""

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` checked bytes at ``pos`` (runs in a worker thread)."""
        index = pos // self.piece
        if index != self.index:
            self.data = os.pread(self.fd, self.piece, index * self.piece)
            self.index = index
            self._check(index)
        offset = pos - index * self.piece
        return self.data[offset : offset + n]

    def _check(self, index: int) -> None:
        if self.hashes:
            if bad_piece(self.data, index, self.piece, self.hashes) is not None:
                raise BlobRotten(f"{self.entry.path}: the stored copy failed piece {index}")
        elif self.entry.size <= WHOLE:
            if digest_bytes(algorithm(self.entry.digest), self.data) != self.entry.digest:
                raise BlobRotten(f"{self.entry.path}: the stored copy failed its digest")
        elif index == 0:
            log.warning("%s: no piece hashes for the stored copy; sent unchecked", self.entry.path)


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
        self._stored: StoredPieces | None = None
        self._attempt: int | None = None

    async def read(self, most: int = READ) -> bytes:
        """The next bytes (``b""`` at the end). Raises ``BlobGone`` if bytes already read
        turned out wrong, or the error that ended the fetch."""
        store, digest, size = self.gets.store, self.entry.digest, self.entry.size
        while self.pos < self.stop:
            if not self._verified and store.has_blob(digest, size):
                self._verified = True
                self._reopen(store.blob_path(digest))
                assert self._fd is not None
                info = await trio.to_thread.run_sync(store.torrent_info, digest)
                self._stored = StoredPieces(self._fd, self.entry, info)
            if self._stored is not None:
                return await self._checked(min(most, self.stop - self.pos))
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

    async def _checked(self, n: int) -> bytes:
        assert self._stored is not None
        try:
            data = await trio.to_thread.run_sync(self._stored.read, self.pos, n)
        except BlobRotten:
            self.gets.rotten(self.entry.digest)
            raise
        if not data:
            raise IntegrityError(f"{self.entry.path} ends before byte {self.pos}")
        self.pos += len(data)
        return data

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
