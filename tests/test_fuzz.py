"""Property tests of what peers and local clients can send us: the frame decoder, the control
socket, the manifest parser, the HF endpoint's routes, its Host and cross-site rules and the
endpoint itself (``testing.fuzz``), a few hundred generated cases each. ``scripts/fuzz`` runs
the same targets for 100,000+ cases."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from p2pmodel.testing.fuzz import (
    COMMIT,
    TARGETS,
    Crash,
    check_control,
    check_endpoint,
    check_frames,
    check_guard,
    check_manifest,
    check_route,
)

SLOW = {"control_socket", "hf_endpoint"}  # one trio run per case


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_generated_inputs_never_crash(name: str) -> None:
    """Whatever is generated, the target answers with its own error or accepts only what the
    rules allow (see testing.fuzz for each target's rules)."""
    target = TARGETS[name]

    @settings(
        max_examples=150 if name in SLOW else 400,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(target.strategy)
    def run(case: Any) -> None:
        target.check(case)

    run()


def test_the_checks_catch_what_they_look_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check fails on what it guards against: a decoder that raises something else than
    its protocol error, a control server that logs a bug, a parser that lets a path climb out
    of the model's directory."""
    import msgpack

    from p2pmodel.core import manifest as manifest_module
    from p2pmodel.testing import fuzz

    frame = b"\x00\x00\x00\x01\xc0"
    check_frames(([frame], [2, 1]))  # refused as a protocol error: fine
    monkeypatch.setattr(fuzz, "decode", lambda payload: 1 / 0)
    with pytest.raises(Crash, match="decode raised ZeroDivisionError"):
        check_frames(([frame], []))

    status = msgpack.packb({"op": "status"})
    request = len(status).to_bytes(4, "big") + status
    check_control(request)
    with pytest.raises(Crash, match="logged a bug"):
        check_control(request, status=lambda: {"agent": 1 / 0})

    climbing = msgpack.packb(
        {
            "v": 1,
            "name": "n",
            "source": "s",
            "commit": "c",
            "files": [["../x", 1, "sha256:" + "0" * 64]],
        }
    )
    check_manifest(climbing)  # refused by the parser: fine
    monkeypatch.setattr(manifest_module, "check_path", lambda p: p)
    with pytest.raises(Crash, match="unsafe path"):
        check_manifest(climbing)


def test_the_http_checks_catch_what_they_look_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP checks fail on what they guard against: a route that lets a NUL through, a
    Host rule that takes any name, an endpoint that answers a cross-site request, and one
    that puts a NUL from the path into a header (the 500 of audit item 9)."""
    from types import SimpleNamespace

    from p2pmodel.core import hfapi, httpguard
    from p2pmodel.services import hfendpoint

    nul = ("raw", ("GET", "/acme/tiny/resolve/main/a%00b", ""))
    check_route(nul)  # refused as a bad request: fine
    with monkeypatch.context() as m:
        m.setattr(hfapi, "_file_path", lambda p: p)
        with pytest.raises(Crash, match="no repository holds"):
            check_route(nul)

    check_guard(("evil.example", {}))
    with monkeypatch.context() as m:
        m.setattr(httpguard.HostRule, "accepts", lambda self, host: True)
        with pytest.raises(Crash, match="accepted"):
            check_guard(("evil.example", {}))

    info = f"/api/models/acme/tiny/tree/{COMMIT}"
    cross = ("GET", info, "", ("localhost", {"sec-fetch-site": "cross-site"}), {})
    check_endpoint(cross)
    lax = SimpleNamespace(HostRule=httpguard.HostRule, cross_site=lambda headers, host: None)
    with monkeypatch.context() as m:
        m.setattr(hfendpoint, "httpguard", lax)
        with pytest.raises(Crash, match="looked up"):
            check_endpoint(cross)

    path = ("GET", "/acme/tiny/resolve/main/a%00b", "", ("localhost", {}), {})
    check_endpoint(path)
    with monkeypatch.context() as m:
        m.setattr(hfapi, "_file_path", lambda p: p)
        m.setattr(hfapi, "header_text", lambda text: text)
        with pytest.raises(Crash, match="a header no server may send"):
            check_endpoint(path)
