"""``git clone`` / ``git lfs pull`` take LFS objects from the office: real ``git`` and Debian's
``git-lfs`` against a bare repository served by the test mirror (git's dumb HTTP protocol),
whose LFS objects live only behind the mirror's LFS batch API. The origin URL is unreachable;
``p2pmodel git setup`` writes the ``insteadOf`` line that takes git to the mirror, and the LFS
endpoint (the origin's) is rewritten by the same ``[[mirror]]`` rule in the transfer agent.

Every test sets ``HOME`` and ``GIT_CONFIG_GLOBAL`` (the real ``~/.gitconfig`` is never
touched). In the host namespace the agent side runs with ``P2PMODEL_LAN=off``; two
workstations with ``serve`` run only inside the test namespace (``lan``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmodel.testing.mirror import spawn
from p2pmodel.testing.models import Repo, make_model

from .serving import serving

MiB = 1024 * 1024
REPO = "acme/lfs-model"

pytestmark = pytest.mark.skipif(
    not shutil.which("git") or not shutil.which("git-lfs"), reason="needs git and git-lfs"
)


def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout


def bare_repository(root: Path, repo: Repo) -> Path:
    """``root/acme/lfs-model.git``: the model's small files as blobs and its LFS files as
    pointers (no LFS object anywhere but on the mirror)."""
    work = root / "build"
    work.mkdir()
    env = _plain_env(root / "build-home")
    _git("init", "-q", "-b", "main", str(work), env=env)
    patterns = set()
    for f in repo.files:
        target = work / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.lfs:
            patterns.add(f.path)
            target.write_text(
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.sha256}\n"
                f"size {f.size}\n"
            )
        else:
            shutil.copyfile(f.data_path, target)
    (work / ".gitattributes").write_text(
        "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in sorted(patterns))
    )
    _git("add", "-A", cwd=work, env=env)
    _git("commit", "-q", "-m", "model", cwd=work, env=env)
    bare = root / "git" / f"{REPO}.git"
    bare.parent.mkdir(parents=True)
    _git("clone", "-q", "--bare", str(work), str(bare), env=env)
    _git("update-server-info", cwd=bare, env=env)
    return root / "git"


def _plain_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "P2PMODEL_"))}
    env.update(
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
        GIT_TERMINAL_PROMPT="0",
    )
    (home / ".gitconfig").touch()
    return env


class LfsMirror:
    """The test mirror as a process: the model's LFS batch API and the bare repository."""

    def __init__(self, repo: Repo, workdir: Path, git_root: Path, *flags: str) -> None:
        spec = workdir / "repo.json"
        spec.write_text(repo.to_json())
        self.proc, urls = spawn(spec, workdir, "--git-root", str(git_root), *flags)
        self.hub_url = urls["hub_url"]
        self.repo = repo

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.hub_url}/_stats", timeout=5) as r:
            data: dict[str, object] = json.load(r)
            return data

    def weight_bytes(self) -> int:
        """Bytes of the LFS objects the mirror sent (its cdn paths), nothing else."""
        by_path = self.stats()["by_path"]
        assert isinstance(by_path, dict)
        return sum(n for p, n in by_path.items() if p.startswith("/lfs/"))

    def fault(self, **changes: object) -> None:
        req = urllib.request.Request(
            f"{self.hub_url}/_faults", data=json.dumps(changes).encode(), method="POST"
        )
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def origin() -> Iterator[str]:
    """An origin URL nothing answers on (bound, never listening)."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{dead.getsockname()[1]}/"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_model(tmp_path / "model", REPO, shards=2, shard_size=3 * MiB)


def workstation(
    tmp_path: Path, name: str, origin: str, mirror_url: str, lan: str, extra: str = ""
) -> dict[str, str]:
    """A workstation's environment: its own HOME, global git config, P2PMODEL_HOME with the
    mirror rule, git-lfs installed and ``p2pmodel git setup`` done."""
    home = tmp_path / name
    env = _plain_env(home)
    p2p = home / "p2pmodel"
    p2p.mkdir()
    (p2p / "config.toml").write_text(
        f'{extra}[[mirror]]\nfor = "{origin}"\nuse = ["{mirror_url}/"]\n'
    )
    env.update(P2PMODEL_HOME=str(p2p), P2PMODEL_LAN=lan)
    _git("lfs", "install", "--skip-repo", env=env)
    r = subprocess.run(
        [sys.executable, "-m", "p2pmodel", "git", "setup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return env


def clone(env: dict[str, str], origin: str, dest: Path, *, skip_smudge: bool = False) -> int:
    e = {**env, "GIT_LFS_SKIP_SMUDGE": "1"} if skip_smudge else env
    r = subprocess.run(
        ["git", "clone", "-q", f"{origin}{REPO}.git", str(dest)],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0:
        print(r.stderr)
    return r.returncode


def exact(repo: Repo, dest: Path) -> bool:
    for f in repo.files:
        got = dest / f.path
        if not got.is_file() or hashlib.sha256(got.read_bytes()).hexdigest() != f.sha256:
            return False
    return True


def weights(repo: Repo) -> int:
    return sum(f.size for f in repo.files if f.lfs)


def test_a_clone_takes_lfs_objects_once_from_the_mirror_then_from_the_store(
    tmp_path: Path, origin: str, repo: Repo
) -> None:
    """The first clone is exact with the weights from the mirror once; a second clone on the
    same workstation takes them from its store (no weight byte from the mirror); the objects
    are kept in the store under the LFS endpoint, and the store's blobs stay read-only. The
    user's git credential for the origin host is never sent to the mirror."""
    mirror = LfsMirror(repo, tmp_path, bare_repository(tmp_path, repo))
    try:
        env = workstation(tmp_path, "ws1", origin, mirror.hub_url, "off")
        creds = Path(env["HOME"]) / ".git-credentials"
        creds.write_text(origin.replace("http://", "http://me:origin-secret@") + "\n")
        _git("config", "--global", "credential.helper", f"store --file={creds}", env=env)
        assert clone(env, origin, tmp_path / "c1") == 0
        assert exact(repo, tmp_path / "c1")
        first = mirror.weight_bytes()
        print(f"clone 1: {first} weight bytes from the mirror of {weights(repo)}")
        assert first == weights(repo)
        assert mirror.stats()["authorized"] == {}, "a credential reached the mirror"
        assert clone(env, origin, tmp_path / "c2") == 0
        assert exact(repo, tmp_path / "c2")
        print(f"clone 2 (same store): {mirror.weight_bytes() - first} weight bytes")
        assert mirror.weight_bytes() == first
        store = Path(env["P2PMODEL_HOME"]) / "store"
        refs = subprocess.run(
            [sys.executable, "-m", "p2pmodel", "ls", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{origin}{REPO}.git/info/lfs" in refs
        for f in repo.files:
            if f.lfs:
                blob = store / "blobs" / "sha256" / f.sha256[:2] / f.sha256
                assert blob.stat().st_mode & 0o222 == 0, "a store blob became writable"
    finally:
        mirror.stop()


MODES = ["here", pytest.param("serve", marks=pytest.mark.lan)]


def one_workstation(
    tmp_path: Path, origin: str, mirror: LfsMirror, mode: str
) -> tuple[dict[str, str], contextlib.AbstractContextManager[object]]:
    """One workstation: the fetch in the transfer agent's process with the LAN off (host
    namespace), or through its running ``serve`` (inside the test namespace)."""
    if mode == "here":
        return workstation(tmp_path, "ws1", origin, mirror.hub_url, "off"), contextlib.nullcontext()
    port = free_port()
    extra = f'hf_endpoint = "off"\npeers = ["127.0.0.1:{free_port()}"]\n'
    env = workstation(tmp_path, "ws1", origin, mirror.hub_url, "on", extra)
    return env, serve(env, "ws1", tmp_path, port)


@pytest.mark.parametrize("mode", MODES)
def test_skip_smudge_then_lfs_pull_behaves_the_same(
    tmp_path: Path, origin: str, repo: Repo, mode: str
) -> None:
    """``GIT_LFS_SKIP_SMUDGE=1 git clone`` leaves pointers; ``git lfs pull`` then fetches the
    objects through the agent, exact, the weights from the mirror once."""
    mirror = LfsMirror(repo, tmp_path, bare_repository(tmp_path, repo))
    try:
        env, running = one_workstation(tmp_path, origin, mirror, mode)
        with running:
            dest = tmp_path / "c1"
            assert clone(env, origin, dest, skip_smudge=True) == 0
            assert not exact(repo, dest)
            assert mirror.weight_bytes() == 0
            _git("lfs", "pull", cwd=dest, env=env)
            assert exact(repo, dest)
            assert mirror.weight_bytes() == weights(repo)
    finally:
        mirror.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_tampering_mirror_ends_the_clone_with_no_wrong_file(
    tmp_path: Path, origin: str, repo: Repo, mode: str
) -> None:
    """The mirror corrupts the LFS objects: the checkout fails, no file with wrong bytes is
    checked out or stored, and git-lfs gets no object."""
    mirror = LfsMirror(repo, tmp_path, bare_repository(tmp_path, repo), "--corrupt")
    try:
        env, running = one_workstation(tmp_path, origin, mirror, mode)
        with running:
            dest = tmp_path / "c1"
            assert clone(env, origin, dest) != 0
            for f in repo.files:
                got = dest / f.path
                if f.lfs and got.is_file():
                    data = got.read_bytes()
                    assert hashlib.sha256(data).hexdigest() == f.sha256 or data.startswith(
                        b"version https://git-lfs"
                    ), f"{f.path}: wrong bytes checked out"
            objects = list((dest / ".git" / "lfs" / "objects").rglob("*")) if dest.exists() else []
            assert not [o for o in objects if o.is_file()], "git-lfs got an object"
            store = Path(env["P2PMODEL_HOME"]) / "store" / "blobs"
            assert not [b for b in store.rglob("*") if b.is_file()], "a wrong blob was stored"
    finally:
        mirror.stop()


# -- setup --print / --undo ---------------------------------------------------------------------


def _p2p(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_setup_print_writes_nothing_and_undo_removes_only_what_setup_wrote(tmp_path: Path) -> None:
    """``--print`` shows the insteadOf line and the transfer agent and leaves the file alone;
    setup writes them to the file git chooses (``GIT_CONFIG_GLOBAL``); a second setup adds
    nothing; ``--undo`` removes exactly those entries and keeps the user's own."""
    env = _plain_env(tmp_path / "home")
    p2p = tmp_path / "p2p"
    p2p.mkdir()
    (p2p / "config.toml").write_text(
        '[[mirror]]\nfor = "https://huggingface.co/"\n'
        'use = ["https://hf-mirror.example/", "https://huggingface.co/"]\n'
    )
    env["P2PMODEL_HOME"] = str(p2p)
    gitconfig = Path(env["GIT_CONFIG_GLOBAL"])
    _git("config", "--global", "user.name", "Someone", env=env)
    _git("config", "--global", "--add", "url.https://other.example/.insteadOf", "x:", env=env)
    before = gitconfig.read_text()

    r = _p2p(env, "git", "setup", "--print")
    assert r.returncode == 0, r.stderr
    assert "url.https://hf-mirror.example/.insteadOf https://huggingface.co/" in r.stdout
    assert "lfs.standalonetransferagent p2pmodel" in r.stdout
    assert "lfs.customtransfer.p2pmodel.path" in r.stdout
    assert gitconfig.read_text() == before

    assert _p2p(env, "git", "setup").returncode == 0
    get = lambda key: _git("config", "--global", "--get-all", key, env=env).split()  # noqa: E731
    assert get("url.https://hf-mirror.example/.insteadOf") == ["https://huggingface.co/"]
    assert get("lfs.standalonetransferagent") == ["p2pmodel"]
    assert get("lfs.customtransfer.p2pmodel.args")[-2:] == ["git", "lfs-agent"]
    once = gitconfig.read_text()
    assert _p2p(env, "git", "setup").returncode == 0
    assert gitconfig.read_text() == once, "a second setup changed the file"

    r = _p2p(env, "git", "setup", "--undo")
    assert r.returncode == 0, r.stderr
    after = _git("config", "--global", "--list", env=env)
    assert "p2pmodel" not in after and "hf-mirror" not in after, after
    assert "user.name=Someone" in after
    assert "url.https://other.example/.insteadof=x:" in after.lower()


def test_setup_follows_xdg_config_home_without_a_global_file(tmp_path: Path) -> None:
    """Without ``GIT_CONFIG_GLOBAL`` and ``~/.gitconfig``, git's own choice,
    ``$XDG_CONFIG_HOME/git/config``, is where setup writes (and undo cleans)."""
    home = tmp_path / "home"
    env = _plain_env(home)
    del env["GIT_CONFIG_GLOBAL"]
    (home / ".gitconfig").unlink()
    xdg = tmp_path / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git" / "config").touch()
    env["XDG_CONFIG_HOME"] = str(xdg)
    env["P2PMODEL_HOME"] = str(tmp_path / "p2p")
    assert _p2p(env, "git", "setup").returncode == 0
    assert "standalonetransferagent = p2pmodel" in (xdg / "git" / "config").read_text()
    assert not (home / ".gitconfig").exists()
    assert _p2p(env, "git", "setup", "--undo").returncode == 0
    assert "p2pmodel" not in (xdg / "git" / "config").read_text()


# -- two workstations on the LAN (inside the test namespace) ------------------------------------


@contextlib.contextmanager
def serve(
    env: dict[str, str], name: str, tmp_path: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    home = Path(env["P2PMODEL_HOME"])
    args = ["--interface", "127.0.0.1", "--port", str(port), "--no-discovery"]
    env = {**env, "P2PMODEL_LOG": "info"}
    with serving(home, args, env, tmp_path / f"{name}.serve.log") as proc:
        yield proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.lan
def test_a_second_workstation_clones_the_weights_from_the_first_over_the_lan(
    tmp_path: Path, origin: str, repo: Repo
) -> None:
    """Two workstations with ``serve`` running: the first clone takes the weights from the
    mirror once (through its agent, which then seeds them); the second takes them from the
    first agent over the LAN, under 5% of the weights from the mirror."""
    mirror = LfsMirror(repo, tmp_path, bare_repository(tmp_path, repo))
    try:
        p1, p2 = free_port(), free_port()

        def static(port: int) -> str:
            return f'hf_endpoint = "off"\npeers = ["127.0.0.1:{port}"]\n'

        ws1 = workstation(tmp_path, "ws1", origin, mirror.hub_url, "on", static(p2))
        ws2 = workstation(tmp_path, "ws2", origin, mirror.hub_url, "on", static(p1))
        with serve(ws1, "ws1", tmp_path, p1), serve(ws2, "ws2", tmp_path, p2):
            assert clone(ws1, origin, tmp_path / "c1") == 0
            assert exact(repo, tmp_path / "c1")
            first = mirror.weight_bytes()
            assert clone(ws2, origin, tmp_path / "c2") == 0
            assert exact(repo, tmp_path / "c2")
            second = mirror.weight_bytes() - first
        print(
            f"weights {weights(repo)} B; from the mirror: workstation 1 {first} B, "
            f"workstation 2 {second} B"
        )
        assert first == weights(repo)
        assert second < 0.05 * weights(repo)
    finally:
        mirror.stop()
