"""The ``tether`` command: ``tether serve``, ``tether keys create|list|revoke`` and
``tether sim``.

Each subcommand is one module with an ``add_<name>(subparsers)`` function that declares its
flags and sets ``run`` to the function that carries it out; a new subcommand is one more such
module, added to :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from tether import __version__

from ._args import default_keys_file
from ._keys import add_keys
from ._serve import add_serve, load_keys
from ._sim import add_sim

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "default_keys_file", "load_keys", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Tether session engine")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve(subparsers)
    add_keys(subparsers)
    add_sim(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # ``serve --workers`` reuses it
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.run(args)
    return result
