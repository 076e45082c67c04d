"""``tether keys create | list | revoke``: the keys file, edited while a server may be reading
it (a running ``tether serve`` picks the change up within ``--keys-reload-interval``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tether.http import create_key, read_keys_file, revoke_key

from ._args import add_keys_option, default_keys_file

if TYPE_CHECKING:
    import argparse


def add_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keys", help="manage API keys and agent tokens",
                              description="Manage the keys file's API keys and agent tokens. "
                              "A running tether serve picks up changes within a second.")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="make an API key (or with --agent, an agent token) and print it once"
    )
    create.add_argument("--workspace", required=True, help="the workspace it belongs to")
    create.add_argument("--agent", action="store_true", help="an agent token (agt_...)")
    add_keys_option(create)
    create.set_defaults(run=_run_create)
    listing = actions.add_parser(
        "list", help="the stored keys: workspace, kind, fingerprint, creation time (never a key)"
    )
    add_keys_option(listing)
    listing.set_defaults(run=_run_list)
    revoke = actions.add_parser(
        "revoke", help="remove a key; a running server refuses it within a second"
    )
    revoke.add_argument("fingerprint", metavar="FINGERPRINT",
                        help="the key's fingerprint as `tether keys list` shows it (or at "
                        "least its first 6 digits)")
    add_keys_option(revoke)
    revoke.set_defaults(run=_run_revoke)


def _run_create(args: argparse.Namespace) -> int:
    path = args.keys or default_keys_file()
    try:
        key = create_key(path, "agent" if args.agent else "api", args.workspace)
    except (ValueError, OSError) as error:
        print(f"tether keys create: {error}", file=sys.stderr)
        return 2
    print(key)
    print(f"(stored its hash in {path}; this is the only time it is shown)", file=sys.stderr)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    path = args.keys or default_keys_file()
    try:
        stored = read_keys_file(path).keys if path.exists() else []
    except (ValueError, OSError) as error:
        print(f"tether keys list: {error}", file=sys.stderr)
        return 2
    if not stored:
        print(f"no keys in {path}", file=sys.stderr)
        return 0
    rows = [("WORKSPACE", "KIND", "FINGERPRINT", "CREATED")]
    rows += [(k.workspace_id, k.kind, k.fingerprint, k.created_at) for k in stored]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[3])
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    path = args.keys or default_keys_file()
    try:
        removed = revoke_key(path, args.fingerprint)
    except (ValueError, OSError) as error:
        print(f"tether keys revoke: {error}", file=sys.stderr)
        return 2
    print(f"revoked {removed.kind} key {removed.fingerprint} of {removed.workspace_id} "
          f"(removed from {path})")
    return 0
