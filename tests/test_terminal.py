"""The plain progress renderer (stderr not a TTY): what lines it prints, and when. Time is the
``now`` argument: no sleeps, no clock."""

from __future__ import annotations

import io

from p2pmodel.adapters.terminal import PlainRenderer
from p2pmodel.core.progress import Progress

MB = 1000 * 1000


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_nothing_to_fetch_prints_nothing():
    """While a get has no file yet (resolving, a mirror that does not answer, retries before
    its error) no ``0 B / 0 B`` line is printed, however often it is updated, nor at the end."""
    out = io.StringIO()
    r = PlainRenderer(Progress(), out, interval=5.0)
    for t in range(0, 120, 1):
        r.update(now=float(t))
    r.update(final=True, now=120.0)
    assert out.getvalue() == ""


def test_a_stalled_get_prints_once_until_it_moves():
    """The first summary says the size; while no byte arrives nothing more is printed; bytes
    that move the printed figures bring the next line, at most one per interval."""
    out = io.StringIO()
    p = Progress()
    p.add("a", "model.safetensors", 10_000 * MB)
    r = PlainRenderer(p, out, interval=5.0)
    for t in range(60):
        r.update(now=float(t))
    assert lines(out) == ["progress: 0 B / 10.0 GB at 0 B/s, ETA --:--"]
    p.advance("a", 500 * MB, "mirror")
    r.update(now=60.0)
    p.advance("a", 500 * MB, "mirror")
    r.update(now=61.0)  # within the interval of the line just printed
    assert len(lines(out)) == 2 and lines(out)[1].startswith("progress: 500.0 MB / 10.0 GB")
    r.update(now=66.0)
    assert lines(out)[2].startswith("progress: 1.0 GB / 10.0 GB")
    p.advance("a", 1000, "mirror")  # too little to change what a line says
    r.update(now=80.0)
    assert len(lines(out)) == 3


def test_finished_files_and_the_end_are_printed_once():
    """Each finished file gets one line; the close prints the final summary unless the last
    line already said it."""
    out = io.StringIO()
    p = Progress()
    p.add("a", "a.bin", 2 * MB)
    p.add("b", "b.bin", 2 * MB)
    r = PlainRenderer(p, out, interval=5.0)
    r.update(now=0.0)
    p.advance("a", 2 * MB, "mirror")
    p.set_state("a", "done")
    r.update(now=1.0)
    r.update(now=2.0)
    assert lines(out) == ["progress: 0 B / 4.0 MB at 0 B/s, ETA --:--", "done: a.bin (2.0 MB)"]
    r.update(final=True, now=3.0)
    assert lines(out)[-1].startswith("progress: 2.0 MB / 4.0 MB")
    r.update(final=True, now=4.0)
    assert len(lines(out)) == 3
    p.advance("b", 2 * MB, "LAN", lan=True)
    p.set_state("b", "done")
    r.update(final=True, now=5.0)
    assert lines(out)[3] == "done: b.bin (2.0 MB)"
    assert lines(out)[4] == "progress: 4.0 MB / 4.0 MB at 800.0 KB/s, ETA 0:00"


def test_the_clock_is_used_without_now():
    """Without ``now`` the renderer reads its clock (a fake one here)."""
    out = io.StringIO()
    p = Progress()
    p.add("a", "a.bin", 10 * MB)
    t = [100.0]
    r = PlainRenderer(p, out, interval=5.0, clock=lambda: t[0])
    r.update()
    p.advance("a", 5 * MB, "mirror")
    t[0] = 102.0
    r.update()
    assert len(lines(out)) == 1
    t[0] = 105.0
    r.update()
    assert lines(out)[1] == "progress: 5.0 MB / 10.0 MB at 1.0 MB/s, ETA 0:05"
