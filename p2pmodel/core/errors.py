"""Errors that reach the user, classed by whose fault they are.

Every error the CLI prints is one of these: one line, no traceback, and an exit code that says
whose fault it was. Anything else that escapes is a bug of ours (the CLI logs its traceback).
"""

from __future__ import annotations


class P2PModelError(Exception):
    """Base class: ``str(err)`` is the one line the user sees."""

    exit_code = 1


class UserError(P2PModelError):
    """The user's input is wrong: a bad reference, unknown name, bad config or argument."""

    exit_code = 2


class NotFound(UserError):
    """Every source says the thing does not exist (or is not ours to see). ``code`` is the
    Hub's ``X-Error-Code`` when a source gave one (``RepoNotFound``, ``RevisionNotFound``,
    ``EntryNotFound``, ``GatedRepo``)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SourceError(P2PModelError):
    """Every source that could serve something failed (network, HTTP errors, missing files)."""

    exit_code = 3


class IntegrityError(P2PModelError):
    """No source gave bytes that match the upstream digest."""

    exit_code = 4


class LocalError(P2PModelError):
    """This machine cannot do it: disk full, permissions, a store we cannot write."""

    exit_code = 5


class ProtocolError(P2PModelError):
    """A remote answer does not have the shape we expect (a mirror's or a peer's fault)."""

    exit_code = 3


def first_cause(exc: BaseException) -> BaseException:
    """The one error to report out of an exception group (trio wraps what a nursery's tasks
    raise): an interrupt first, then an error of ours classed above, then any other error.
    A group of nothing but cancellations is returned as it is."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    for kind in (KeyboardInterrupt, P2PModelError, Exception):
        for e in leaves:
            if isinstance(e, kind):
                return e
    return exc
