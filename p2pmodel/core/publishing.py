"""What ``p2pmodel publish`` may read (pure): the places, filesystems and kinds of file it
refuses, and where a symlink found in the directory may lead.

Theory of operation. Publishing turns files into blobs that any keyed peer may fetch, so it
reads only regular files that are inside the directory the user named. A symlink is resolved
to where it really leads: inside the directory (and not into the parts publish leaves out,
``.git`` and ``.cache/huggingface``) it stands for its target, anywhere else the publish is
refused. ``/proc``, ``/sys`` and ``/dev`` hold no model: a directory under them is refused, and
so is any file on a pseudo filesystem (procfs, sysfs, ...) wherever it is mounted, which the
service checks on each opened file's device number against those ``pseudo_devices`` reads out
of ``/proc/self/mountinfo``. Fifos, sockets and devices are refused by name. The service does
the file IO; nothing here touches a file.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import PurePosixPath

FORBIDDEN = (PurePosixPath("/proc"), PurePosixPath("/sys"), PurePosixPath("/dev"))

# Filesystems whose files are the kernel's state, not data anyone wrote: never published.
PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "devpts", "securityfs", "debugfs", "tracefs", "cgroup",
        "cgroup2", "pstore", "bpf", "configfs", "efivarfs", "mqueue", "binfmt_misc", "fusectl",
        "selinuxfs", "nsfs", "rpc_pipefs", "autofs", "hugetlbfs",
    }
)  # fmt: skip

_SPECIAL = (
    (stat.S_ISFIFO, "a fifo"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def forbidden_place(path: PurePosixPath) -> PurePosixPath | None:
    """The one of ``/proc``, ``/sys``, ``/dev`` that holds ``path`` (absolute, resolved)."""
    for top in FORBIDDEN:
        if path == top or top in path.parents:
            return top
    return None


def pseudo_devices(mountinfo: str) -> dict[tuple[int, int], str]:
    """The device (major, minor) of every mount of a pseudo filesystem in the text of
    ``/proc/self/mountinfo``, with its type (bind mounts included: each has its own line).
    Lines that do not parse are skipped."""
    found = {}
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest or rest[0] not in PSEUDO_FILESYSTEMS:
            continue
        major, _, minor = fields[2].partition(":")
        if major.isdigit() and minor.isdigit():
            found[int(major), int(minor)] = rest[0]
    return found


def special_kind(mode: int) -> str | None:
    """What a file that is neither regular, a directory nor a symlink is (``st_mode``)."""
    for test, kind in _SPECIAL:
        if test(mode):
            return kind
    return None


def left_out(parts: Iterable[str]) -> str | None:
    """The part of a repo path publish leaves out (``.git`` at any depth, the Hugging Face
    ``local_dir`` metadata at ``.cache/huggingface``) that holds it, or None."""
    seen: list[str] = []
    for name in parts:
        if name == ".git" or (seen == [".cache"] and name == "huggingface"):
            return "/".join([*seen, name])
        seen.append(name)
    return None


def beneath(top: PurePosixPath, path: PurePosixPath) -> tuple[str, ...] | None:
    """``path``'s components under ``top`` (both absolute and resolved), or None when it is
    not inside ``top``. ``top`` itself is ``()``."""
    if path != top and top not in path.parents:
        return None
    return path.relative_to(top).parts


def is_loop(target: tuple[str, ...], walking: Iterable[tuple[str, ...]]) -> bool:
    """Whether walking the directory ``target`` (components under the top) from inside the
    directories being walked would come back to one of them: it is one of them or holds one."""
    return any(w[: len(target)] == target for w in walking)


def shown(text: str) -> str:
    """``text`` for a one-line message: control characters escaped."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
