"""The store over time: last use, pins, ``rm``/``gc``/``ls``, and the cap an agent keeps, never
touching what a running get or a peer's fetch uses."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pmodel import cli
from p2pmodel.adapters.store import Store
from p2pmodel.core.config import Config, parse_config
from p2pmodel.core.digests import digest_bytes
from p2pmodel.core.manifest import FileEntry, Manifest
from p2pmodel.core.refs import parse_ref
from p2pmodel.services.agent import Agent, AgentOptions
from p2pmodel.services.get import GetRequest
from p2pmodel.testing.fakes import MemoryMirror, SimLan
from p2pmodel.testing.models import Repo, make_model

MiB = 1024 * 1024


@pytest.fixture
def clock_ticks(monkeypatch: pytest.MonkeyPatch) -> itertools.count[int]:
    """The store's wall clock, one second per reading (uses are strictly ordered)."""
    ticks = itertools.count(1_000_000)
    monkeypatch.setattr("p2pmodel.adapters.store.time.time", lambda: float(next(ticks)))
    return ticks


def model_in(store: Store, ref: str, files: dict[str, bytes]) -> Manifest:
    """A complete model in the store, recorded as a get does."""
    entries = []
    for path, data in files.items():
        digest = digest_bytes("sha256", data)
        store.put_blob_bytes(digest, data)
        store.save_torrent_info(digest, b"info")
        entries.append(FileEntry(path, len(data), digest))
    m = Manifest(ref, "hf://org/demo", "a" * 40, tuple(entries))
    store.save_manifest(m)
    store.set_ref(parse_ref(ref).text, m.digest)
    store.make_snapshot(parse_ref(ref), m)
    return m


SHARED = b"shared text encoder" * 100


# -- the store adapter ------------------------------------------------------------------------


def test_a_use_is_recorded_by_a_get_and_by_a_snapshot(tmp_path, clock_ticks):
    """Recording a ref and making its snapshot (what every get, fast or not, does) mark the
    model as used now; the others keep their time."""
    store = Store(tmp_path)
    model_in(store, "one:v1", {"a": b"1"})
    m2 = model_in(store, "two:v1", {"b": b"2"})
    uses = store.last_used()
    assert uses["one:v1"] < uses["two:v1"]
    store.make_snapshot(parse_ref("one:v1"), store.lookup("one:v1") or m2)
    again = store.last_used()
    assert again["one:v1"] > again["two:v1"] == uses["two:v1"]


def test_pins_are_kept_per_ref(tmp_path):
    """Pinning and unpinning a ref round-trips; models report their pin."""
    store = Store(tmp_path)
    model_in(store, "one:v1", {"a": b"1"})
    store.set_pinned("one:v1", True)
    assert store.pins() == {"one:v1"}
    assert [m.pinned for m in store.models()] == [True]
    store.set_pinned("one:v1", False)
    assert store.pins() == set()


def test_rm_takes_the_ref_its_snapshot_and_only_its_own_blobs(tmp_path):
    """Removing a model deletes its ref, snapshot, torrent info and the blobs only it used; a
    blob the other model shares and the other model's snapshot stay."""
    store = Store(tmp_path)
    one = model_in(store, "one:v1", {"own": b"only one", "enc": SHARED})
    model_in(store, "two:v1", {"own": b"only two", "enc": SHARED})
    store.set_pinned("one:v1", True)  # the CLI refuses pinned ones; the adapter obeys
    plan, deleted = store.collect(drop=("one:v1",))
    own = next(f.digest for f in one.files if f.path == "own")
    assert plan.evict == ("one:v1",) and deleted == [own]
    assert not store.blob_path(own).exists() and store.torrent_info(own) is None
    assert store.blob_path(digest_bytes("sha256", SHARED)).exists()
    assert set(store.refs()) == {"two:v1"}
    assert not store.snapshot_dir(parse_ref("one:v1")).exists()
    assert (store.snapshot_dir(parse_ref("two:v1")) / "enc").read_bytes() == SHARED
    assert "one:v1" not in store.last_used() and store.pins() == set()


def test_two_refs_of_one_snapshot_directory_keep_it_until_both_go(tmp_path):
    """``hf://o/r`` and ``hf://o/r@main`` share a snapshot directory: removing one keeps it."""
    store = Store(tmp_path)
    model_in(store, "hf://org/demo", {"w": b"weights"})
    model_in(store, "hf://org/demo@main", {"w": b"weights"})
    top = store.snapshot_dir(parse_ref("hf://org/demo"))
    store.collect(drop=("hf://org/demo",))
    assert (top / "w").read_bytes() == b"weights"
    store.collect(drop=("hf://org/demo@main",))
    assert not top.exists() and not (store.snapshots / "hf").exists()


def test_partial_downloads_nobody_wants_go_unless_a_download_holds_them(tmp_path):
    """A partial file of a blob no model wants is deleted by a collection, unless a running
    download holds its lock; a model's own partial (resume state) stays."""
    store = Store(tmp_path)
    wanted = model_in(store, "one:v1", {"a": b"present"})
    missing = FileEntry("b", 1000, "sha256:" + "b" * 64)
    m = Manifest("one:v1", "hf://org/demo", "a" * 40, (*wanted.files, missing))
    store.save_manifest(m)
    store.set_ref("one:v1", m.digest)
    orphan, held = "sha256:" + "c" * 64, "sha256:" + "d" * 64
    for key in (missing.digest, orphan, held):
        os.close(store.open_partial(key, 1000))
    lock = store.lock_partial(held)
    try:
        store.collect()
    finally:
        assert lock is not None
        os.close(lock)
    assert store.partial_path(missing.digest).exists()
    assert store.partial_path(held).exists()
    assert not store.partial_path(orphan).exists()


def test_only_blobs_the_agent_stopped_seeding_are_deleted(tmp_path):
    """``deletable`` limits deletion to what the agent unseeded; the rest waits for later."""
    store = Store(tmp_path)
    m = model_in(store, "one:v1", {"a": b"1", "b": b"2"})
    a, b = (f.digest for f in m.files)
    plan, deleted = store.collect(drop=("one:v1",), deletable={a})
    assert set(plan.delete) == {a, b} and deleted == [a]
    assert store.blob_path(b).exists()


# -- the command line -------------------------------------------------------------------------


def run(monkeypatch, capsys, home: Path, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("P2PMODEL_HOME", str(home))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_shows_sizes_last_use_pins_and_shared_blobs(tmp_path, monkeypatch, capsys):
    """``ls`` lists each model with its size, last use and pin, and the blobs it shares with
    another model; ``--json`` carries the same."""
    store = Store(tmp_path)
    model_in(store, "one:v1", {"own": b"x" * 3000, "enc": SHARED})
    model_in(store, "two:v1", {"enc": SHARED})
    store.set_pinned("two:v1", True)
    code, out, _ = run(monkeypatch, capsys, tmp_path, "ls")
    assert code == 0
    assert "used just now" in out and out.count("pinned") == 1
    assert f"shares 1 blob ({len(SHARED) / 1000:.1f} KB) with two:v1" in out
    assert "store: 4.9 KB on disk" in out
    code, out, _ = run(monkeypatch, capsys, tmp_path, "ls", "--json")
    rows = {r["ref"]: r for r in json.loads(out)}
    assert rows["one:v1"]["on_disk"] == 3000 + len(SHARED)
    assert rows["two:v1"]["pinned"] and not rows["one:v1"]["pinned"]
    assert rows["one:v1"]["shared_with"] == [{"ref": "two:v1", "blobs": 1, "bytes": len(SHARED)}]


def test_rm_pin_unpin_and_gc_from_the_command_line(tmp_path, monkeypatch, capsys, clock_ticks):
    """Without an agent: pin refuses an unknown model, rm refuses a pinned one (exit 2), gc
    evicts the older unpinned model over store_max, and rm removes a model."""
    store = Store(tmp_path)
    model_in(store, "old:v1", {"w": b"o" * 4000})
    model_in(store, "mid:v1", {"w": b"m" * 4000})
    model_in(store, "new:v1", {"w": b"n" * 4000})
    (tmp_path / "config.toml").write_text('store_max = "9kB"\n')
    code, _, err = run(monkeypatch, capsys, tmp_path, "pin", "nope:v1")
    assert code == 2 and "nope:v1 is not in the store" in err
    assert run(monkeypatch, capsys, tmp_path, "pin", "old:v1")[0] == 0
    code, _, err = run(monkeypatch, capsys, tmp_path, "rm", "old:v1")
    assert code == 2 and "is pinned" in err
    code, out, _ = run(monkeypatch, capsys, tmp_path, "gc", "--json")
    assert code == 0 and json.loads(out)["evicted"] == ["mid:v1"]
    assert set(store.refs()) == {"old:v1", "new:v1"}
    assert run(monkeypatch, capsys, tmp_path, "unpin", "old:v1")[0] == 0
    code, out, _ = run(monkeypatch, capsys, tmp_path, "rm", "old:v1")
    assert code == 0 and "rm old:v1: evicted old:v1; deleted 1 blobs" in out
    assert set(store.refs()) == {"new:v1"}


# -- an agent keeping its store under the cap -------------------------------------------------


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, Repo]:
    """Three ~2 MiB models; all three share one small file (model_index.json)."""
    return {
        n: make_model(tmp_path / "up", f"acme/{n}", shards=2, shard_size=1 * MiB, seed=i)
        for i, n in enumerate(["a", "b", "c"])
    }


def office_config(office: SimLan, extra: dict[str, object]) -> Config:
    hub = office.mirror.hub_url + "/"
    return parse_config({"mirror": [{"for": "https://huggingface.co/", "use": [hub]}], **extra}, {})


async def start_agent(nursery: trio.Nursery, office: SimLan, home: Path, config: Config) -> Agent:
    home.mkdir(parents=True, exist_ok=True)
    opts = AgentOptions(rpc_port=0, segment=256 * 1024)
    return await nursery.start(Agent(home, config, opts, office.outside()).run)  # type: ignore[no-any-return]


async def get(agent: Agent, repo: Repo) -> Path:
    req = GetRequest(parse_ref(f"hf://{repo.repo_id}"))
    return (await agent.gets.get(req)).path


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    with trio.fail_after(600):
        while not cond():  # noqa: ASYNC110 (bounded by fail_after, on the fake clock)
            await trio.sleep(0.05)


def exact(path: Path, repo: Repo) -> bool:
    return all((path / f.path).read_bytes() == f.data_path.read_bytes() for f in repo.files)


async def test_the_cap_evicts_the_older_model_and_keeps_pinned_running_and_fresh(
    tmp_path, repos, clock, nursery
):
    """With a cap smaller than two models, the agent evicts the older unpinned model after a
    get; a pinned model stays; a model a running get fetches is not evicted and its get ends
    exact; the model a get just fetched is kept even over the cap."""
    office = SimLan(MemoryMirror(list(repos.values())), lan_rate=None)
    size = sum(f.size for f in repos["a"].files)
    config = office_config(office, {"store_max": int(1.5 * size)})
    agent = await start_agent(nursery, office, tmp_path / "ws", config)
    store = agent.store
    await get(agent, repos["a"])
    await get(agent, repos["b"])
    await wait_until(lambda: set(store.refs()) == {"hf://acme/b"}, "a evicted")
    b = store.lookup("hf://acme/b")
    assert b is not None and {d for d, _ in store.verified_blobs()} == set(b.blobs())
    store.set_pinned("hf://acme/b", True)

    office.mirror.faults.total_rate = 1 * MiB  # a (again) takes ~2 s: collect meanwhile
    running: dict[str, Path] = {}

    async def get_a() -> None:
        running["a"] = await get(agent, repos["a"])

    nursery.start_soon(get_a)
    await wait_until(lambda: agent.gets.stats.from_mirrors_total > 2 * size + MiB // 2, "midway")
    during = await agent.keeper.collect()
    assert during.plan.evict == () and during.plan.over_cap
    await wait_until(lambda: "a" in running, "get of a")
    assert exact(running["a"], repos["a"])
    office.mirror.faults.total_rate = None

    path_c = await get(agent, repos["c"])
    await wait_until(lambda: "hf://acme/a" not in store.refs(), "a evicted again")
    assert set(store.refs()) == {"hf://acme/b", "hf://acme/c"}
    assert exact(path_c, repos["c"]) and exact(
        store.snapshot_dir(parse_ref("hf://acme/b")), repos["b"]
    )


async def test_a_blob_a_peer_is_fetching_stays_until_the_fetch_ends(
    tmp_path, repos, clock, nursery
):
    """``rm`` on an agent that is serving the model to a peer deletes what no peer is
    fetching, keeps the blob in flight (the peer's get ends exact), and a later gc deletes it."""
    office = SimLan(MemoryMirror([repos["a"]]), lan_rate=256 * 1024)
    config = office_config(office, {})
    holder = await start_agent(nursery, office, tmp_path / "ws0", config)
    await get(holder, repos["a"])
    fetcher = await start_agent(nursery, office, tmp_path / "ws1", config)
    await wait_until(lambda: holder.id in fetcher.peers.alive_ids(), "peers")
    done: dict[str, Path] = {}

    async def fetch() -> None:
        done["a"] = await get(fetcher, repos["a"])

    nursery.start_soon(fetch)
    await wait_until(lambda: bool(holder.swarm.uploading()), "a peer fetching")
    in_flight = holder.swarm.uploading()
    removed = await holder.keeper.remove("hf://acme/a")
    assert set(removed.plan.kept_busy) >= in_flight
    assert all(holder.store.blob_path(d).exists() for d in in_flight)
    assert all(holder.swarm.seeding(d) for d in in_flight)
    await wait_until(lambda: "a" in done, "the peer's get")
    assert exact(done["a"], repos["a"])
    after = await holder.keeper.collect()
    assert set(after.deleted) >= in_flight
    assert list(holder.store.verified_blobs()) == []
