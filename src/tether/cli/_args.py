"""What the subcommands share: argument types with clear refusals, the help layout, and where
the keys file is."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_keys_file() -> Path:
    """``$TETHER_KEYS_FILE``, else ``$XDG_CONFIG_HOME/tether/keys.json`` (``~/.config``)."""
    explicit = os.environ.get("TETHER_KEYS_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether" / "keys.json"


def add_keys_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, default=None, metavar="FILE",
                        help="keys file (default: $TETHER_KEYS_FILE, else "
                        "$XDG_CONFIG_HOME/tether/keys.json, else ~/.config/tether/keys.json)")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default in ``--help``, except where there is nothing to show
    (a flag that is off, an option whose help already says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in help_text:
            return help_text
        return super()._get_help_string(action) or help_text


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be from 0 to 1")
    return value
