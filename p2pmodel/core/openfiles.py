"""The open-files budget (pure): how the process's file limit is shared out between the
connections others can make the agent hold, and who may open one more.

Theory of operation. Every connection is a file descriptor, and so is every blob the agent
reads or writes, every mirror connection, the control socket and libtorrent's file pool. A
process that runs out fails wherever it next opens something (measured: 1,574 idle HTTP
connections under the soft limit of 1024 a systemd user unit starts with made the agent exit
from its next look at the network). So the agent raises its soft limit to the hard one at
start, and ``budget`` splits what it got: a reserve for the agent's own files (a quarter, at
least ``RESERVE``), then of the rest 3/8 for libtorrent's ``connections_limit``, 1/4 for peer
link connections served and 1/8 for HTTP connections served (each may hold a blob file open
besides its socket, so they count twice), each capped where more would not help. The caps
sum to under the limit, so a flood on every port at once still leaves the agent its reserve.
``Admission`` applies one cap: at most ``per_host`` connections from one address and
``total`` in all; a connection over either is closed at once by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RESERVE = 192  # files the agent keeps for itself at the least (store, mirrors, mDNS, threads)
SWARM_MOST = 1000  # libtorrent's connections_limit when files are plenty
LINK_MOST = 512  # peer-link connections served at once in all
LINK_PER_HOST = 16  # ... from one address
HTTP_MOST = 512  # HTTP connections served at once in all
LEAST = 8  # no cap below this, whatever the limit


@dataclass(frozen=True)
class Caps:
    total: int
    per_host: int


@dataclass(frozen=True)
class Budget:
    files: int  # the soft limit it was made for
    swarm: int  # libtorrent's connections_limit
    link: Caps
    http: Caps

    def describe(self) -> dict[str, int]:
        return {
            "files": self.files,
            "swarm": self.swarm,
            "link": self.link.total,
            "link_per_host": self.link.per_host,
            "http": self.http.total,
            "http_per_host": self.http.per_host,
        }


def _clamp(value: int, most: int) -> int:
    return max(LEAST, min(most, value))


def budget(files: int) -> Budget:
    """The caps that fit a soft limit of ``files`` open files."""
    spare = max(0, files - max(RESERVE, files // 4))
    link = _clamp(spare // 4, LINK_MOST)
    http = _clamp(spare // 8, HTTP_MOST)
    return Budget(
        files=files,
        swarm=_clamp(spare * 3 // 8, SWARM_MOST),
        link=Caps(link, max(2, min(LINK_PER_HOST, link // 4))),
        # A loopback endpoint sees every local client as one address: half of all for one.
        http=Caps(http, max(2, http // 2)),
    )


@dataclass
class Admission:
    """Connections held per address under ``caps``: ``admit`` one (False: close it at once),
    ``leave`` when it ends."""

    caps: Caps
    held: dict[str, int] = field(default_factory=dict)
    total: int = 0
    refused: int = 0

    def admit(self, host: str) -> bool:
        if self.total >= self.caps.total or self.held.get(host, 0) >= self.caps.per_host:
            self.refused += 1
            return False
        self.held[host] = self.held.get(host, 0) + 1
        self.total += 1
        return True

    def leave(self, host: str) -> None:
        left = self.held.get(host, 0) - 1
        if left < 0:
            return
        self.total -= 1
        if left:
            self.held[host] = left
        else:
            del self.held[host]
