"""The agent's HTTP server against what a hostile web page or a careless client sends: a
foreign ``Host`` (DNS rebinding), cross-site requests from a browser, control characters in a
file path, and the same missing repository asked for over and over. A real agent (every
service, on the in-memory LAN fakes) with the test mirror behind it, over real HTTP on
loopback; Chromium, when installed, loads only loopback pages."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pmodel.testing.models import Repo

from .test_dashboard import QUIET
from .test_hfendpoint import Endpoint, repos, start_endpoint

__all__ = ["repos"]  # the module-scoped fixture, shared with test_hfendpoint
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium resolves no name but these: evil.example is a name rebound to 127.0.0.1.
RESOLVE = "MAP evil.example 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/setup installs it)"
)


@pytest.fixture
async def endpoint(
    nursery: trio.Nursery, tmp_path: Path, repos: dict[str, Repo]
) -> AsyncIterator[Callable[..., Any]]:
    yield start_endpoint(nursery, tmp_path, repos)


def upstream(ep: Endpoint) -> int:
    """Requests the agent sent to its mirrors (both of them)."""
    return ep.mirror.mirror.stats.requests + ep.other.mirror.stats.requests


def pinned(ep: Endpoint) -> dict[str, str]:
    return ep.agent.store.refs()


def port(ep: Endpoint) -> int:
    return int(ep.url.rpartition(":")[2])


def paths(repo: Repo) -> list[str]:
    """A request of each kind that, on a cold agent, would fetch from upstream."""
    lfs = next(f for f in repo.files if f.lfs)
    return [
        f"/api/models/{repo.repo_id}/revision/main",
        f"/api/models/{repo.repo_id}",
        f"/api/models/{repo.repo_id}/tree/main?recursive=true",
        f"/{repo.repo_id}/resolve/main/{lfs.path}",
        f"/api/models/{repo.repo_id}/paths-info/main",
        f"/api/models/{repo.repo_id}/refs",
        f"/api/models/{repo.repo_id}/commits/main",
    ]


# -- Host: DNS rebinding ----------------------------------------------------------------------


async def test_a_foreign_host_is_misdirected(endpoint, repos):
    """With ``Host: evil.example`` (a name rebound to 127.0.0.1) every path answers 421 with a
    short body: not the status (home, agent id, peers), not a file, and nothing is fetched."""
    ep = await endpoint()
    repo = repos["model"]
    async with httpx.AsyncClient() as http:
        hosts = [
            *("evil.example", f"evil.example:{port(ep)}", "127.0.0.1.evil.example"),
            *("localhost.evil.example", "127.0.0.2", "[::1]", "", "a b", "127.0.0.1:x"),
        ]
        for host in hosts:
            for path in ["/", "/api/p2pmodel/status", "/metrics", *paths(repo)]:
                for method in ("GET", "HEAD"):
                    r = await http.request(method, ep.url + path, headers={"Host": host})
                    assert r.status_code == 421, (host, path, method, r.status_code)
                    assert len(r.content) < 200
                    assert ep.agent.id not in r.text and str(ep.agent.home) not in r.text
    assert upstream(ep) == 0 and pinned(ep) == {}


async def test_loopback_names_are_served(endpoint, repos):
    """``127.0.0.1`` and ``localhost``, with or without a port and in any case, are this
    agent: the status answers, and a model comes through."""
    ep = await endpoint()
    async with httpx.AsyncClient() as http:
        for host in ("127.0.0.1", f"127.0.0.1:{port(ep)}", "localhost", f"LocalHost:{port(ep)}"):
            r = await http.get(ep.url + "/api/p2pmodel/status", headers={"Host": host})
            assert r.status_code == 200 and r.json()["agent"] == ep.agent.id
        r = await http.get(ep.url + paths(repos["model"])[0], headers={"Host": "localhost"})
        assert r.status_code == 200 and r.json()["sha"] == repos["model"].commit


# -- cross-site requests ----------------------------------------------------------------------

FOREIGN = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:8888"},  # another app on this machine (a notebook)
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
    {"Referer": "http://evil.example/page.html"},
]


@pytest.mark.parametrize("headers", FOREIGN)
async def test_a_cross_site_request_fetches_and_pins_nothing(endpoint, repos, headers):
    """A request a foreign web page could make the browser send (``Sec-Fetch-Site`` other
    than same-origin/none, a foreign ``Origin`` or ``Referer``) gets 403: the agent asks no
    mirror and pins nothing, for any route, whatever the method."""
    ep = await endpoint()
    async with httpx.AsyncClient() as http:
        for path in paths(repos["model"]):
            for method in ("GET", "HEAD", "POST"):
                r = await http.request(method, ep.url + path, headers=headers)
                assert r.status_code == 403, (path, method, r.status_code)
    assert upstream(ep) == 0 and pinned(ep) == {}


async def test_same_origin_and_plain_clients_are_served(endpoint, repos):
    """huggingface_hub (no Origin, no Sec-Fetch-*), a typed-in address (``none``), and a page
    of the agent's own origin are served; the dashboard's own JSON is read-only and is served
    to a cross-site navigation too."""
    ep = await endpoint()
    own = ep.url
    path = paths(repos["model"])[0]
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-origin"},
                        {"Origin": own, "Sec-Fetch-Site": "same-origin"},
                        {"Referer": own + "/"}):  # fmt: skip
            r = await http.get(own + path, headers=headers)
            assert r.status_code == 200, headers
        r = await http.get(own + "/", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 200 and "p2pmodel agent" in r.text
    assert pinned(ep) != {}


@needs_chromium
async def test_the_dashboard_works_in_chromium_and_a_rebound_name_does_not(
    endpoint, tmp_path: Path
):
    """Chromium renders the dashboard, whose script reads the status same-origin (the agent id
    shows); the same page loaded through a name that resolves to 127.0.0.1 gets the 421 and no
    agent id."""
    ep = await endpoint()
    assert CHROMIUM is not None

    async def dom(url: str) -> str:
        run = await trio.run_process(
            [CHROMIUM, *QUIET, f"--user-data-dir={tmp_path / 'chromium'}",
             f"--host-resolver-rules={RESOLVE}", "--virtual-time-budget=3000", "--dump-dom", url],
            capture_stdout=True, capture_stderr=True,
        )  # fmt: skip
        return run.stdout.decode()

    page = await dom(ep.url + "/")
    assert f'<span id="agent">{ep.agent.id}</span>' in page
    page = await dom(f"http://localhost:{port(ep)}/")
    assert f'<span id="agent">{ep.agent.id}</span>' in page
    page = await dom(f"http://evil.example:{port(ep)}/")
    assert ep.agent.id not in page and "Misdirected" in page


async def evil_site(nursery: trio.Nursery, html: str) -> str:
    """A web page of another origin on loopback (hypercorn), its URL."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = html.encode()
        headers = [(b"content-type", b"text/html"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    binds: list[str] = await nursery.start(serve, app, cfg)
    return binds[0].replace("127.0.0.1", "localhost")


@needs_chromium
async def test_a_foreign_page_in_chromium_cannot_make_the_agent_fetch(
    endpoint, nursery, tmp_path: Path, repos
):
    """A page of another origin (on loopback) makes Chromium send what it can without asking:
    a no-cors fetch of the repository info, an image of a file, a form-like POST. The agent
    refuses each (403) and asks its mirrors nothing."""
    ep = await endpoint()
    assert CHROMIUM is not None
    target = ep.url
    info, _, _, file, *_ = paths(repos["model"])
    html = f"""<!doctype html><html><body><p id=done>no</p>
<img src="{target}{file}">
<script>
Promise.allSettled([
  fetch("{target}{info}", {{mode: "no-cors"}}),
  fetch("{target}{file}", {{mode: "no-cors"}}),
  fetch("{target}{info}", {{mode: "no-cors", method: "POST", body: "x"}}),
]).then(() => {{ document.getElementById("done").textContent = "yes"; }});
</script></body></html>"""
    url = await evil_site(nursery, html)
    run = await trio.run_process(
        [CHROMIUM, *QUIET, f"--user-data-dir={tmp_path / 'chromium'}",
         f"--host-resolver-rules={RESOLVE}",
         "--virtual-time-budget=3000", "--dump-dom", url + "/"],
        capture_stdout=True, capture_stderr=True,
    )  # fmt: skip
    assert '<p id="done">yes</p>' in run.stdout.decode()
    assert upstream(ep) == 0 and pinned(ep) == {}
    assert ep.agent.hf is not None and ep.agent.hf.stats.cross_site >= 3


# -- control characters in a path ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        "resolve/main/config.json%00.txt",
        "resolve/main/a%0d%0aX-Injected:%20yes",
        "resolve/main/%ff.json",
        "resolve/main/a%5cb.json",
        "resolve/main/a/%2e%2e/b.json",
        "resolve/main/a//b.json",
    ],
)
async def test_a_path_no_repository_can_hold_is_a_bad_request(endpoint, repos, tail, caplog):
    """A file path with a NUL, CR/LF, bytes that are not UTF-8, a backslash or an empty or
    '..' segment gets 400 with a one-line message: no 500, no traceback, no header of ours
    carries it, and nothing is fetched."""
    ep = await endpoint()
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient() as http:
        for method in ("GET", "HEAD"):
            r = await http.request(method, f"{ep.url}/{repos['model'].repo_id}/{tail}")
            assert r.status_code == 400, (method, r.status_code)
            assert "x-injected" not in r.headers
            if method == "GET":
                assert "\n" not in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]
    assert "Traceback" not in caplog.text
    assert upstream(ep) == 0


async def test_a_tree_folder_with_a_nul_is_a_bad_request(endpoint, repos, caplog):
    """The same for the folder of a tree listing."""
    ep = await endpoint()
    repo = repos["model"]
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{ep.url}/api/models/{repo.repo_id}/tree/main/a%00b?recursive=1")
    assert r.status_code == 400
    assert "Traceback" not in caplog.text


# -- a missing repository, asked for again and again ---------------------------------------------


async def test_a_missing_repo_is_asked_upstream_once_in_a_while(endpoint, repos):
    """200 requests for a repository upstream does not have cost the mirrors what one does;
    each still gets the Hub's RepoNotFound. Another revision, or another token, asks again,
    and so does the same one once the answer is 30 s old (a fake clock)."""
    ep = await endpoint()
    assert ep.agent.hf is not None
    now = [1000.0]
    ep.agent.hf.now = lambda: now[0]
    url = f"{ep.url}/api/models/acme/nope/revision/main"
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
        once = upstream(ep)
        assert once > 0
        for _ in range(199):
            r = await http.head(url)
            assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
        r = await http.get(f"{ep.url}/acme/nope/resolve/main/config.json")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
        assert upstream(ep) == once
        await http.get(f"{ep.url}/api/models/acme/nope/revision/v2")
        assert upstream(ep) == 2 * once
        await http.get(url, headers={"Authorization": "Bearer hf_other"})
        assert upstream(ep) == 3 * once
        now[0] += 29
        await http.get(url)
        assert upstream(ep) == 3 * once
        now[0] += 2
        await http.get(url)
        assert upstream(ep) == 4 * once


async def test_clients_asking_at_once_for_a_missing_repo_share_one_answer(endpoint):
    """50 clients at once asking for a repository upstream does not have: one question goes
    upstream (a slow one), every client gets RepoNotFound."""
    ep = await endpoint()
    for mirror in (ep.mirror, ep.other):

        async def slow(request: httpx.Request, handle: Any = mirror.handle) -> httpx.Response:
            await trio.sleep(0.3)
            return await handle(request)

        mirror.handle = slow  # type: ignore[method-assign]
    codes: list[str] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as http:

        async def ask() -> None:
            r = await http.get(f"{ep.url}/api/models/acme/nope/revision/main")
            codes.append(r.headers.get("x-error-code", str(r.status_code)))

        async with trio.open_nursery() as clients:
            for _ in range(50):
                clients.start_soon(ask)
    assert codes == ["RepoNotFound"] * 50
    assert upstream(ep) == 2  # the untrusted mirror, then the hub: once each
