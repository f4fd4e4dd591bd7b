"""What the commands share: the home, JSON output, one request to the running agent."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..core.control import Failed, Request
from ..core.errors import P2PModelError, UserError


def user_home() -> Path:
    from ..adapters.home import default_home

    return default_home()


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def ref_text(text: str) -> str:
    from ..core.refs import parse_ref

    return parse_ref(text).text


def agent_op(home: Path, req: Request) -> dict[str, Any] | None:
    """One request to the running agent; None when no agent runs. Its error is raised here as
    the same one-line error with the same exit code."""
    from ..adapters.control import NoAgent, ask
    from ..core.control import Done

    try:
        answer = ask(home, req, timeout=600.0)
    except NoAgent:
        return None
    if isinstance(answer, Failed):
        raise failure(answer, req.op)
    assert isinstance(answer, Done)
    return answer.data


def failure(answer: Failed, op: str) -> P2PModelError:
    """The agent's error as the one-line error this command raises, with its exit code."""
    if answer.message.startswith("bad op"):  # an agent started before this p2pmodel was updated
        return UserError(f"the running agent does not know '{op}': restart it")
    error = P2PModelError(answer.message)
    error.exit_code = answer.code
    return error


def ago(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds // span:.0f} {unit} ago"
    return "just now"
