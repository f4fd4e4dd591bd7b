"""Where ``serve`` logs: stderr, in a form the systemd journal reads with its levels.

When stderr is connected to the journal (systemd sets ``JOURNAL_STREAM`` to the device and inode
of that stream), every line starts with its syslog priority, ``<3>`` for errors to ``<7>`` for
debug (sd-daemon(3)); journald stores the priority and adds the time itself, so the line holds
none. Lines of a multi-line message (a traceback) each carry the prefix, so none is stored at
the wrong level. In a terminal, or redirected to a file, lines carry the time and level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def to_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Is ``stream`` the journal's (``JOURNAL_STREAM`` names it)?"""
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(dev) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` on every line of the record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = max((lv for lv in PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{PRIORITY[level]}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def setup_logging(
    level: str, stream: TextIO | None = None, env: Mapping[str, str] | None = None
) -> logging.Handler:
    """Log records at ``level`` (``P2PMODEL_LOG``: debug, info, warning, error) and above to
    ``stream`` (stderr), for the journal or for people. Returns the handler installed."""
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    if to_journal(stream, env):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_p2pmodel", False)]:
        root.removeHandler(old)
    handler._p2pmodel = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))
    # httpx logs every request at info: thousands of lines per model in the journal.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # zeroconf warns, with a traceback, for each send on an address that has just gone away;
    # the agent notices the change within seconds and announces on the addresses left.
    logging.getLogger("zeroconf").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
    return handler
