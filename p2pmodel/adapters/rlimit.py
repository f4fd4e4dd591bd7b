"""This process's limit of open files (``RLIMIT_NOFILE``): raised to the hard limit at the
agent's start, and read to size the connection caps (``core.openfiles``)."""

from __future__ import annotations

import contextlib
import logging
import resource

from ..core.openfiles import Budget, budget

log = logging.getLogger(__name__)

UNLIMITED = 1 << 20  # what an unlimited soft limit counts as (Linux's default nr_open)


def open_files() -> int:
    """The soft limit of open files now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_files() -> int:
    """Raise the soft limit of open files as far as the hard limit allows (a systemd user
    service starts with 1024 of a hard 524288); the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        wants = [hard] if hard != resource.RLIM_INFINITY else [resource.RLIM_INFINITY, UNLIMITED]
        for want in wants:
            if want == resource.RLIM_INFINITY or want > soft:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                    break
    now = open_files()
    log.info("open files: at most %d (%s)", now, budget(now).describe())
    return now


def current_budget() -> Budget:
    """The connection caps that fit the limit this process has now."""
    return budget(open_files())
