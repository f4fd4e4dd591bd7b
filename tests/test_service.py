"""``p2pmodel service``: the systemd user unit (checked by ``systemd-analyze verify``),
install/uninstall/status in a temporary ``XDG_CONFIG_HOME``, and ``serve``'s log lines for the
journal. ``systemctl`` is a stand-in script on PATH, so no test ever talks to a real user
manager (a developer's session would otherwise start the agent)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmodel.adapters.journal import setup_logging
from p2pmodel.core.unit import env_line, exec_line, exec_start, render_unit

VENV_P2PMODEL = Path(sys.executable).parent / "p2pmodel"
NO_BUS = "echo 'Failed to connect to bus: No medium found' >&2; exit 1"


def fake_systemctl(bin_dir: Path, log: Path, answers: bool) -> None:
    """A ``systemctl`` that logs its arguments and answers like a user manager (or like a
    machine without one)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    body = f'echo "$@" >> {log}\n' + ("exit 0" if answers else NO_BUS)
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


def service(
    tmp: Path, *args: str, answers: bool, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    fake_systemctl(tmp / "bin", tmp / "systemctl.log", answers)
    env = {
        "PATH": f"{tmp / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp / "user"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "P2PMODEL_HOME": str(home or tmp / "home"),
    }
    return subprocess.run(
        [str(VENV_P2PMODEL), "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def unit_file(tmp: Path) -> Path:
    return tmp / "config" / "systemd" / "user" / "p2pmodel.service"


def systemd_verify(tmp: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup --system-packages)")
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(tmp / "config")}
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_words_are_quoted_as_systemd_reads_them():
    """Paths with spaces, quotes, ``%`` and ``$`` are quoted and escaped for ``ExecStart=`` and
    ``Environment=``; plain words are left alone."""
    assert exec_line(["/usr/bin/p2pmodel", "serve"]) == "/usr/bin/p2pmodel serve"
    assert exec_line(['/opt/my tools/p2p"model', "50%", "$HOME"]) == (
        '"/opt/my tools/p2p\\"model" "50%%" "$$HOME"'
    )
    assert env_line("P2PMODEL_HOME", "/srv/models 100%") == '"P2PMODEL_HOME=/srv/models 100%%"'
    text = render_unit(["/usr/bin/p2pmodel"], {"P2PMODEL_HOME": "/srv/m"})
    assert exec_start(text) == "/usr/bin/p2pmodel serve"
    assert "Restart=on-failure" in text and "Environment=P2PMODEL_HOME=/srv/m" in text


def test_install_without_a_user_systemd_writes_a_valid_unit_and_says_what_to_run(tmp_path):
    """Where no user systemd answers, install still writes the unit (running this p2pmodel
    executable, with P2PMODEL_HOME even when it has a space and a %), exits 0, prints the two
    systemctl commands and the linger hint; the unit passes ``systemd-analyze verify``."""
    home = tmp_path / "models 100%"
    r = service(tmp_path, "install", answers=False, home=home)
    assert r.returncode == 0, r.stderr
    assert "systemctl --user daemon-reload" in r.stdout
    assert "systemctl --user enable --now p2pmodel.service" in r.stdout
    assert "loginctl enable-linger" in r.stdout
    text = unit_file(tmp_path).read_text()
    assert exec_start(text) == f"{VENV_P2PMODEL} serve"
    assert env_line("P2PMODEL_HOME", str(home)) in text
    verified = systemd_verify(tmp_path, unit_file(tmp_path))
    assert verified.returncode == 0 and verified.stderr == "" and verified.stdout == "", (
        verified.stdout + verified.stderr
    )


def test_install_enables_and_starts_where_a_user_systemd_answers(tmp_path):
    """With a user manager, install reloads systemd and enables and starts the unit; uninstall
    stops and disables it, removes the file and reloads; a second uninstall is harmless."""
    r = service(tmp_path, "install", answers=True)
    assert r.returncode == 0, r.stderr
    assert "enabled and started p2pmodel.service" in r.stdout
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls[-2:] == ["--user daemon-reload", "--user enable --now p2pmodel.service"]
    r = service(tmp_path, "uninstall", answers=True)
    assert r.returncode == 0 and not unit_file(tmp_path).exists()
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls[-2:] == ["--user disable --now p2pmodel.service", "--user daemon-reload"]
    again = service(tmp_path, "uninstall", answers=False)
    assert again.returncode == 0 and "not installed" in again.stdout


def test_status_says_what_is_installed_and_whether_an_agent_answers(tmp_path):
    """``service status --json`` reports the unit, that it runs this p2pmodel, systemd's view
    and that no agent answers for this home."""
    before = json.loads(service(tmp_path, "status", "--json", answers=False).stdout)
    assert before["installed"] is False and before["user_systemd"] is False
    service(tmp_path, "install", answers=False)
    r = service(tmp_path, "status", "--json", answers=True)
    st = json.loads(r.stdout)
    assert st["installed"] and st["this_p2pmodel"] and st["user_systemd"]
    assert st["agent"] is None and st["unit"] == str(unit_file(tmp_path))


def test_log_lines_carry_the_syslog_priority_when_stderr_is_the_journal(tmp_path):
    """With JOURNAL_STREAM naming the stream, every line (a traceback's too) starts with its
    syslog priority and carries no time; otherwise lines carry the time and level name."""
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        handler = setup_logging("info", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        try:
            log = logging.getLogger("p2pmodel.test")
            log.info("agent up")
            log.debug("not shown")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("it failed")
        finally:
            logging.getLogger().removeHandler(handler)
    lines = path.read_text().splitlines()
    assert lines[0] == "<6>p2pmodel.test: agent up"
    assert lines[1] == "<3>p2pmodel.test: it failed"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[1:])
    plain = io.StringIO()
    handler = setup_logging("warning", plain, {"JOURNAL_STREAM": "1:2"})
    try:
        logging.getLogger("p2pmodel.test").warning("careful")
    finally:
        logging.getLogger().removeHandler(handler)
    assert plain.getvalue().rstrip().endswith(" WARNING p2pmodel.test: careful")
