"""``p2pmodel key``: the office key; ``p2pmodel tracker``: what the office's tracker needs of it."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import UserError
from .common import user_home


def cmd_key(args: argparse.Namespace) -> int:
    """``key new``: a fresh key on stdout (nowhere else); ``key fingerprint``: the
    configured key's public fingerprint, to check two workstations agree."""
    if args.key_command == "new":
        import secrets

        from ..core.officekey import KEY_BYTES, format_key

        print(format_key(secrets.token_bytes(KEY_BYTES)))
        if sys.stdout.isatty():
            print(
                'p2pmodel: put it in every workstation\'s config.toml as office_key = "..." '
                "(or in a file named by office_key_file), then restart the agents",
                file=sys.stderr,
            )
        return 0
    if args.key_command == "fingerprint":
        from ..adapters.home import load_config

        key = load_config(user_home()).office_key
        if key is None:
            raise UserError(
                "no office key is configured (office_key, office_key_file, "
                "P2PMODEL_OFFICE_KEY): an open office"
            )
        print(key.fingerprint)
        return 0
    raise UserError("p2pmodel key needs a command: new or fingerprint")


def cmd_tracker(args: argparse.Namespace) -> int:
    """``tracker whitelist``: the info-hash(es) the office's tracker must allow, one a line
    (opentracker's whitelist file). They come out of the office key (a public constant in an
    open office) and reveal nothing of it."""
    if args.tracker_command == "whitelist":
        from ..adapters.home import load_config
        from ..core.tracker import whitelist

        for line in whitelist(load_config(user_home()).office_key):
            print(line)
        return 0
    raise UserError("p2pmodel tracker needs a command: whitelist")
