"""``LimitsService``: keeps the agent to its ``[limits]`` as the hours pass (trio).

Theory of operation. The pure ``core.limits.Limits`` says which rates are in force at a local
moment and when the next window edge comes; this service reads the local clock, applies the
rates and sleeps until that edge (or a minute at most, so a clock that jumps, a DST change or
a suspended laptop is followed soon), or until ``set_limits`` brings a reloaded config.
Applying means telling every watcher: ``GetService`` sets its token bucket (all mirror
traffic), the agent sets the swarm's upload limit (what peers take from us) and the sharing
sharing state's rate (how much of the office's mirror work this agent leases alone). All three
act on running transfers at once, so nothing is dropped. A get run without an agent applies the
rates in force when it starts (``apply``); only a running agent follows the schedule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from ..core.limits import Limits, Rates, Window, describe_rate

log = logging.getLogger(__name__)
RECHECK = 60.0  # seconds: follow wall-clock jumps at least this often


def local_clock() -> tuple[int, float]:
    """(weekday, Monday = 0; seconds since local midnight) now."""
    now = time.time()
    t = time.localtime(now)
    return t.tm_wday, t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec + now % 1


class LimitsService:
    def __init__(
        self, limits: Limits, clock: Callable[[], tuple[int, float]] = local_clock
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.rates: Rates | None = None  # None until first applied
        self.window: Window | None = None
        self._watchers: list[Callable[[Rates], None]] = []
        self._wake = trio.Event()

    def watch(self, fn: Callable[[Rates], None]) -> None:
        """Call ``fn`` (in trio, must not block) with the rates whenever they may have changed,
        and once now if they were applied already."""
        self._watchers.append(fn)
        if self.rates is not None:
            fn(self.rates)

    def set_limits(self, limits: Limits) -> None:
        """A reloaded config: apply its limits now."""
        self.limits = limits
        self.apply()
        self._wake.set()

    def apply(self) -> Rates:
        """Put the rates in force now into effect; returns them."""
        rates, window = self.limits.rates_at(*self.clock())
        if rates != self.rates:
            log.info(
                "limits: mirror download %s, LAN upload %s%s",
                describe_rate(rates.mirror_download),
                describe_rate(rates.lan_upload),
                f" (schedule {window.text})" if window else "",
            )
        self.rates, self.window = rates, window
        for fn in self._watchers:
            fn(rates)
        return rates

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.apply()
        task_status.started()
        while True:
            gap = self.limits.next_change(self.clock()[1])
            with trio.move_on_after(RECHECK if gap is None else min(gap, RECHECK)):
                await self._wake.wait()
            self._wake = trio.Event()
            self.apply()

    def status(self) -> dict[str, Any]:
        rates = self.rates or self.limits.rates_at(*self.clock())[0]
        gap = self.limits.next_change(self.clock()[1])
        return {
            "mirror_download": rates.mirror_download,
            "lan_upload": rates.lan_upload,
            "window": self.window.text if self.window else None,
            "next_change_in": gap,
        }
