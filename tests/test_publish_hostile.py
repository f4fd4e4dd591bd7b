"""``p2pmodel publish`` against a hostile or odd directory: a symlink that leaves it, a pseudo
filesystem (``/proc``, ``/sys``, ``/dev``), a special file, a file swapped for a link between
the scan and the open, a failure half-way. Each is refused with one line and exit 2, and a
refused or failed publish leaves the directory, anything outside it and the store exactly as
they were. Symlinks that stay inside the directory are published as the bytes they point to."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from p2pmodel.adapters.store import Store
from p2pmodel.core import publishing
from p2pmodel.core.errors import UserError
from p2pmodel.core.refs import parse_ref
from p2pmodel.services import publish
from p2pmodel.services.publish import prepare

CANARY = "p2pmodel-canary-5f1e0c"


def run_publish(home: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -m p2pmodel publish ARGS`` with its own home, the LAN off, no agent."""
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", "publish", *args],
        env={
            **os.environ,
            **(env or {}),
            "P2PMODEL_HOME": str(home),
            "P2PMODEL_LAN": "off",
            "P2PMODEL_TEST_CANARY": CANARY,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused(r: Any, *fragments: str) -> None:
    """Exit 2, one line on stderr naming the fault, no traceback, nothing on stdout."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("p2pmodel: error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def tree(*roots: Path, files_only: bool = False) -> dict[str, tuple[object, ...]]:
    """Every entry under ``roots`` (not following links) with its type, mode, link count, size
    and link target: what a publish that changed nothing leaves equal."""
    out: dict[str, tuple[object, ...]] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        paths = [root] + [
            Path(d) / n for d, dirs, files in os.walk(root) for n in sorted(dirs + files)
        ]
        for p in paths:
            st = p.lstat()
            if files_only and stat.S_ISDIR(st.st_mode):
                continue
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            out[str(p)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_nlink,
                size,
                link,
            )
    return out


@dataclass
class Site:
    """A model directory with something hostile in it, the files outside it that must not
    change, and what the refusal must say."""

    model: Path
    fragments: tuple[str, ...]
    outside: list[Path] = field(default_factory=list)


def regular(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _outside_file(tmp: Path) -> Path:
    return regular(tmp / "outside" / "secret", b"not yours\n", 0o640)


def link_to_file_outside(tmp: Path) -> Site:
    secret = _outside_file(tmp)
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    (model / "passwd").symlink_to(secret)
    regular(model / "z.bin", b"z" * 1000)
    return Site(model, ("passwd", "outside"), [secret])


def link_to_directory_outside(tmp: Path) -> Site:
    secret = _outside_file(tmp)
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    (model / "sub").symlink_to(secret.parent, target_is_directory=True)
    return Site(model, ("sub", "outside"), [secret])


def link_to_proc_environ(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    (model / "README.md").symlink_to("/proc/self/environ")
    return Site(model, ("README.md", "outside"))


def relative_link_escaping(tmp: Path) -> Site:
    secret = _outside_file(tmp)
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    regular(model / "sub" / "b.bin", b"b" * 5000)
    (model / "sub" / "c.bin").symlink_to("../../outside/secret")
    regular(model / "sub" / "d.bin", b"d" * 5000)
    return Site(model, ("sub/c.bin", "outside"), [secret])


def link_chain_leaving(tmp: Path) -> Site:
    secret = _outside_file(tmp)
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    (model / "first").symlink_to("second")
    (model / "second").symlink_to(secret)
    return Site(model, ("first", "outside"), [secret])


def fifo(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    os.mkfifo(model / "pipe")
    return Site(model, ("pipe", "fifo"))


def unix_socket(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(model / "sock"))
    return Site(model, ("sock", "socket"))


def device(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    try:
        os.mknod(model / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    return Site(model, ("null", "device"))


def link_to_fifo_inside(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    os.mkfifo(model / ".pipe")
    (model / "weights.bin").symlink_to(".pipe")
    return Site(model, (".pipe", "fifo"))


def link_loop(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    (model / "sub").mkdir()
    (model / "sub" / "again").symlink_to("..", target_is_directory=True)
    return Site(model, ("sub/again", "loop"))


def link_into_git(tmp: Path) -> Site:
    model = tmp / "model"
    regular(model / "a.json", b"{}")
    regular(model / ".git" / "config", b"[remote]\nurl = https://user:token@example.com/r\n")
    (model / "config.txt").symlink_to(".git/config")
    return Site(model, ("config.txt", ".git"))


ATTACKS: list[Callable[[Path], Site]] = [
    link_to_file_outside,
    link_to_directory_outside,
    link_to_proc_environ,
    relative_link_escaping,
    link_chain_leaving,
    fifo,
    unix_socket,
    device,
    link_to_fifo_inside,
    link_loop,
    link_into_git,
]


def store_files(home: Path) -> dict[str, tuple[object, ...]]:
    return tree(home / "store", files_only=True)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
def test_the_cli_refuses_a_hostile_directory_and_changes_nothing(
    tmp_path: Path, attack: Callable[[Path], Site]
) -> None:
    """``p2pmodel publish`` of a directory with a link leaving it, a special file, a link loop
    or a link into ``.git`` exits 2 with one line naming the entry; the directory, the files
    outside it (mode, link count) and the store are unchanged, and no store file holds the
    publisher's environment."""
    site = attack(tmp_path)
    home = tmp_path / "home"
    before = tree(site.model, *site.outside)
    r = run_publish(home, str(site.model), "team:v1")
    assert_refused(r, *site.fragments)
    assert tree(site.model, *site.outside) == before
    assert store_files(home) == {}
    for f in site.outside:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640 and f.stat().st_nlink == 1


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
def test_prepare_refuses_a_hostile_directory_and_changes_nothing(
    tmp_path: Path, attack: Callable[[Path], Site]
) -> None:
    """The service refuses the same directories with a ``UserError`` and changes nothing."""
    site = attack(tmp_path)
    store = Store(tmp_path / "home")
    before = tree(site.model, *site.outside)
    with pytest.raises(UserError) as e:
        prepare(store, site.model, parse_ref("team:v1"), "agent", "t", force=False)
    assert "\n" not in str(e.value)
    for fragment in site.fragments:
        assert fragment in str(e.value)
    assert tree(site.model, *site.outside) == before
    assert store_files(store.home) == {}


def test_no_store_file_holds_the_environment_of_the_publisher(tmp_path: Path) -> None:
    """A link to ``/proc/self/environ`` never puts the publisher's environment in the store."""
    site = link_to_proc_environ(tmp_path)
    home = tmp_path / "home"
    run_publish(home, str(site.model), "team:v1")
    for path in (home / "store").rglob("*") if (home / "store").exists() else []:
        if path.is_file() and not path.is_symlink():
            assert CANARY.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    "place",
    ["/proc/sys/kernel/random", "/proc/self/attr", "/sys/kernel/mm/transparent_hugepage"],
)
def test_the_cli_refuses_to_publish_from_proc_and_sys(tmp_path: Path, place: str) -> None:
    """A directory under ``/proc`` or ``/sys`` is refused before anything is read."""
    if not os.path.isdir(place):
        pytest.skip(f"{place} does not exist here")
    home = tmp_path / "home"
    r = run_publish(home, place, "team:v1")
    assert_refused(r, place.split("/")[1])
    assert store_files(home) == {}


def test_the_cli_refuses_a_link_to_a_directory_under_proc(tmp_path: Path) -> None:
    """Naming a symlink to a ``/proc`` directory is naming that directory: refused."""
    (tmp_path / "model").symlink_to("/proc/sys/kernel/random", target_is_directory=True)
    home = tmp_path / "home"
    assert_refused(run_publish(home, str(tmp_path / "model"), "team:v1"), "/proc")
    assert store_files(home) == {}


def test_the_cli_refuses_to_publish_from_dev(tmp_path: Path) -> None:
    """A directory under ``/dev`` (here one of ours in ``/dev/shm``) is refused and unchanged."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    model = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="p2pmodel-test-"))
    try:
        regular(model / "a.json", b"{}")
        before = tree(model)
        home = tmp_path / "home"
        assert_refused(run_publish(home, str(model), "team:v1"), "/dev")
        assert tree(model) == before and store_files(home) == {}
    finally:
        shutil.rmtree(model)


def test_the_cli_refuses_a_proc_filesystem_mounted_inside_the_directory(tmp_path: Path) -> None:
    """A directory of ``/proc`` bind-mounted inside the model directory is refused: the check
    is on the file's filesystem, not its path (run in a private mount namespace)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    model = tmp_path / "model"
    regular(model / "a.json", b"{}")
    (model / "r").mkdir()
    home = tmp_path / "home"
    script = (
        'mount --bind /proc/sys/kernel/random "$1/r" && '
        f'exec "{sys.executable}" -m p2pmodel publish "$1" team:v1'
    )
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(model)],
        env={**os.environ, "P2PMODEL_HOME": str(home), "P2PMODEL_LAN": "off"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "mount:" in r.stderr or "unshare:" in r.stderr:
        pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
    assert_refused(r, "r is on a proc filesystem")
    assert store_files(home) == {}


def test_a_refused_republish_leaves_the_new_files_alone(tmp_path: Path) -> None:
    """A publish refused for want of ``--force`` (it hashed every file first) leaves the new
    file writable, with one link, and the store as it was."""
    model, home = tmp_path / "model", tmp_path / "home"
    regular(model / "a.json", b"{}")
    regular(model / "w.bin", os.urandom(100_000))
    first = run_publish(home, str(model), "team:v1", "--json")
    assert first.returncode == 0, first.stderr
    new = regular(model / "new.bin", os.urandom(50_000))
    before_model, before_store = tree(model), store_files(home)
    r = run_publish(home, str(model), "team:v1")
    assert_refused(r, "--force")
    assert tree(model) == before_model and store_files(home) == before_store
    assert stat.S_IMODE(new.stat().st_mode) == 0o644 and new.stat().st_nlink == 1


def _model_of_four(tmp: Path) -> Path:
    model = tmp / "model"
    for i in range(4):
        regular(model / f"f{i}.bin", bytes([i]) * (1000 + i))
    return model


def test_a_failure_at_the_third_file_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read error at the third file undoes the first two: modes, link counts, no blob,
    partial, torrent or manifest left."""
    model = _model_of_four(tmp_path)
    store = Store(tmp_path / "home")
    before = tree(model)
    real = publish.hash_blob
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "hash_blob", failing)
    with pytest.raises(UserError, match="Input/output error"):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert len(calls) == 3
    assert tree(model) == before and store_files(store.home) == {}


def test_a_failure_while_storing_the_blobs_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the second blob's torrent is saved undoes what was stored before it."""
    from p2pmodel.core.errors import LocalError

    model = _model_of_four(tmp_path)
    store = Store(tmp_path / "home")
    before = tree(model)
    real = Store.save_torrent_info
    calls = []

    def failing(self: Store, digest: str, info: bytes) -> None:
        calls.append(digest)
        if len(calls) == 2:
            raise LocalError("disk full while saving the torrent")
        real(self, digest, info)

    monkeypatch.setattr(Store, "save_torrent_info", failing)
    with pytest.raises(LocalError):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert tree(model) == before and store_files(store.home) == {}


def test_a_file_swapped_for_a_link_after_the_scan_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced by a symlink to an outside file between the scan and the open (TOCTOU)
    is refused; the outside file keeps its mode and link count and the store is unchanged."""
    secret = _outside_file(tmp_path)
    model = _model_of_four(tmp_path)
    real_scan = publish.scan

    def scan_then_swap(top: Path, *rest: Any) -> Any:
        found = real_scan(top, *rest)
        (model / "f2.bin").unlink()
        (model / "f2.bin").symlink_to(secret)
        return found

    monkeypatch.setattr(publish, "scan", scan_then_swap)
    store = Store(tmp_path / "home")
    with pytest.raises(UserError, match=r"f2\.bin changed"):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640 and secret.stat().st_nlink == 1
    assert all(stat.S_IMODE((model / f"f{i}.bin").stat().st_mode) == 0o644 for i in (0, 1, 3))
    assert store_files(store.home) == {}


def test_a_directory_swapped_for_a_link_after_the_scan_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory replaced by a symlink to an outside directory after the scan is refused:
    every component is opened without following links."""
    secret = _outside_file(tmp_path)
    model = tmp_path / "model"
    regular(model / "a.json", b"{}")
    regular(model / "sub" / "secret", b"mine\n")
    real_scan = publish.scan

    def scan_then_swap(top: Path, *rest: Any) -> Any:
        found = real_scan(top, *rest)
        shutil.rmtree(model / "sub")
        (model / "sub").symlink_to(secret.parent, target_is_directory=True)
        return found

    monkeypatch.setattr(publish, "scan", scan_then_swap)
    store = Store(tmp_path / "home")
    with pytest.raises(UserError, match="changed"):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640 and secret.stat().st_nlink == 1
    assert stat.S_IMODE((model / "a.json").stat().st_mode) == 0o644
    assert store_files(store.home) == {}


def test_links_inside_the_directory_publish_what_they_point_to(tmp_path: Path) -> None:
    """A symlink to a file inside the directory is published under the link's path with the
    target's bytes; a symlink to a directory inside is walked under its own path; a dangling
    link is left out. The links stay links; the target is the store's blob."""
    model, home = tmp_path / "model", tmp_path / "home"
    regular(model / "v2" / "w.bin", os.urandom(70_000))
    regular(model / "v2" / "c.json", b'{"a": 1}')
    (model / "w.bin").symlink_to("v2/w.bin")
    (model / "latest").symlink_to("v2", target_is_directory=True)
    (model / "gone").symlink_to("nowhere")
    r = run_publish(home, str(model), "team:v1", "--json")
    assert r.returncode == 0, r.stderr
    files = {f["path"]: f["digest"] for f in json.loads(r.stdout)["files"]}
    assert sorted(files) == ["latest/c.json", "latest/w.bin", "v2/c.json", "v2/w.bin", "w.bin"]
    assert files["w.bin"] == files["v2/w.bin"] == files["latest/w.bin"]
    assert (model / "w.bin").is_symlink() and (model / "latest").is_symlink()
    digest = files["v2/w.bin"]
    blob = home / "store" / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert blob.stat().st_ino == (model / "v2" / "w.bin").lstat().st_ino
    assert stat.S_IMODE((model / "v2" / "w.bin").lstat().st_mode) == 0o444


def test_a_file_reached_through_links_is_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that a link inside the directory reaches again is not hashed (read) twice."""
    model = tmp_path / "model"
    regular(model / "v2" / "w.bin", b"w" * 10_000)
    (model / "latest").symlink_to("v2", target_is_directory=True)
    (model / "w.bin").symlink_to("v2/w.bin")
    real, calls = publish.hash_blob, []
    monkeypatch.setattr(publish, "hash_blob", lambda *a: calls.append(a) or real(*a))
    manifest, _, _ = prepare(
        Store(tmp_path / "home"), model, parse_ref("team:v1"), "agent", "t", force=False
    )
    assert [f.path for f in manifest.files] == ["latest/w.bin", "v2/w.bin", "w.bin"]
    assert len(calls) == 1


def test_a_file_written_while_it_is_hashed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file modified while it is hashed (its mtime moves; a write would move it too) is
    refused, since its digest may not be its bytes, and nothing is left changed."""
    model = _model_of_four(tmp_path)
    real = publish.hash_blob

    def touch_then_hash(path: Path, *rest: Any) -> Any:
        os.utime(model / "f0.bin", ns=(1, 1))
        return real(path, *rest)

    monkeypatch.setattr(publish, "hash_blob", touch_then_hash)
    store = Store(tmp_path / "home")
    with pytest.raises(UserError, match=r"f0\.bin changed"):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert stat.S_IMODE((model / "f0.bin").stat().st_mode) == 0o644
    assert store_files(store.home) == {}


def test_links_that_multiply_the_tree_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links to directories inside the directory can make a small tree walk forever (each
    level twice the last); the walk stops at the manifest's file limit with one line."""
    model = tmp_path / "model"
    level = model / "d0"
    regular(level / "w.bin", b"w")
    for i in range(1, 12):
        up = model / f"d{i}"
        up.mkdir()
        (up / "a").symlink_to(f"../d{i - 1}", target_is_directory=True)
        (up / "b").symlink_to(f"../d{i - 1}", target_is_directory=True)
    monkeypatch.setattr(publish, "MAX_FILES", 1000)
    store = Store(tmp_path / "home")
    with pytest.raises(UserError, match="more than 1000 files"):
        prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert store_files(store.home) == {}


def test_a_copied_file_keeps_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a hard link is not possible the store copies the opened file and makes only its
    own copy read-only; the user's file keeps its mode and link count."""

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    model = _model_of_four(tmp_path)
    store = Store(tmp_path / "home")
    monkeypatch.setattr(os, "link", no_links)
    manifest, already, copied = prepare(
        store, model, parse_ref("team:v1"), "agent", "t", force=False
    )
    assert copied == 4 and not already
    for i, entry in enumerate(manifest.files):
        mine = (model / f"f{i}.bin").stat()
        assert stat.S_IMODE(mine.st_mode) == 0o644 and mine.st_nlink == 1
        blob = store.blob_path(entry.digest)
        assert blob.read_bytes() == bytes([i]) * (1000 + i)
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444


def test_a_file_the_store_holds_already_keeps_its_mode(tmp_path: Path) -> None:
    """A file whose bytes the store already holds as another inode is not made read-only: it is
    not the blob."""
    model, store = _model_of_four(tmp_path), Store(tmp_path / "home")
    for i in range(4):
        data = bytes([i]) * (1000 + i)
        store.put_blob_bytes("sha256:" + hashlib.sha256(data).hexdigest(), data)
    before = tree(model)
    prepare(store, model, parse_ref("team:v1"), "agent", "t", force=False)
    assert tree(model) == before


# -- the pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "top"),
    [
        ("/proc", "/proc"),
        ("/proc/self/environ", "/proc"),
        ("/sys/kernel", "/sys"),
        ("/dev/shm/x", "/dev"),
        ("/home/me/proc", None),
        ("/devices", None),
        ("/", None),
    ],
)
def test_forbidden_place(path: str, top: str | None) -> None:
    """``/proc``, ``/sys`` and ``/dev`` and what is under them are forbidden, nothing else."""
    found = publishing.forbidden_place(PurePosixPath(path))
    assert (str(found) if found else None) == top


def test_pseudo_devices_from_mountinfo() -> None:
    """The device numbers of proc, sysfs and the like are read from mountinfo (bind mounts
    included; escaped mount points and optional fields parsed), not those of disks or tmpfs."""
    text = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw\n"
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=1k\n"
        "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw\n"
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "40 27 0:21 /sys/kernel /home/me/my\\040model/r rw master:1 - proc proc rw\n"
        "41 27 0:50 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "garbage\n"
    )
    assert publishing.pseudo_devices(text) == {
        (0, 21): "proc",
        (0, 22): "sysfs",
        (0, 6): "devtmpfs",
        (0, 50): "cgroup2",
    }


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (stat.S_IFIFO | 0o644, "a fifo"),
        (stat.S_IFSOCK | 0o755, "a socket"),
        (stat.S_IFCHR | 0o600, "a character device"),
        (stat.S_IFBLK | 0o600, "a block device"),
        (stat.S_IFREG | 0o644, None),
        (stat.S_IFDIR | 0o755, None),
    ],
)
def test_special_kinds(mode: int, kind: str | None) -> None:
    """Fifos, sockets and devices are named; regular files and directories are not refused."""
    assert publishing.special_kind(mode) == kind


def test_shown_names_stay_on_one_line() -> None:
    """A name with a newline or other control character is escaped in a message."""
    assert publishing.shown("a\nb\x1bc") == "a\\nb\\x1bc"
    assert publishing.shown("ok/name é") == "ok/name é"
