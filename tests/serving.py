"""``p2pmodel serve`` as a child process for a test: started, waited for (its control socket),
stopped with SIGTERM (SIGKILL after 15 s), its output in a log file. Agents with the LAN on
run only inside the test namespace (``lan`` tests)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path


@contextlib.contextmanager
def serving(
    home: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``serve ARGS`` for ``home`` while inside; fails if it exits or has no control socket
    within 30 s (the log says why)."""
    log = open(log_path, "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pmodel", "serve", *args],
        env=dict(env),
        stdout=log,
        stderr=log,
        preexec_fn=preexec_fn,  # noqa: PLW1509 - the test process runs no threads then
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "run" / "control.sock").exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
