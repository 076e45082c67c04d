"""The keys file: which API keys (``cmd_...``) and agent tokens (``agt_...``) a server trusts.

It stores only SHA-256 hashes of them (they are 256-bit random strings, so a plain hash is
enough; nothing to salt or stretch): a key is shown once, when it is made, and never again.
A key is named afterwards by its *fingerprint*, the first 12 hex digits of its hash, which
``tether keys list`` shows and ``tether keys revoke`` takes. Every change is written to a
temporary file and renamed over the old one, so a server reading the file never sees half a
write.

Keys file (JSON)::

    {"keys": [{"kind": "api", "workspace_id": "ws_default", "hash": "sha256:<hex>",
               "hint": "cmd_AbC", "created_at": "2026-02-14T10:00:00Z"}]}
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from pathlib import Path

KeyKind = Literal["api", "agent"]
PREFIXES: dict[str, str] = {"api": "cmd_", "agent": "agt_"}
DEFAULT_WORKSPACE = "ws_default"
#: Hex digits of the hash that name a key; a revocation may give fewer if they are unique.
FINGERPRINT_DIGITS = 12
MIN_FINGERPRINT_DIGITS = 6


class StoredKey(msgspec.Struct, kw_only=True, frozen=True):
    """One credential as the keys file holds it: its hash, never the key."""

    kind: KeyKind
    workspace_id: str
    hash: str
    hint: str
    created_at: str

    @property
    def fingerprint(self) -> str:
        return self.hash.removeprefix("sha256:")[:FINGERPRINT_DIGITS]


class KeysFile(msgspec.Struct, kw_only=True):
    keys: list[StoredKey] = msgspec.field(default_factory=list)


def digest(key: str) -> str:
    """What the keys file stores of ``key``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(kind: KeyKind) -> str:
    """A fresh random credential with its kind's prefix."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def check_workspace(workspace_id: str) -> None:
    if not (0 < len(workspace_id) <= 256 and workspace_id.isprintable()
            and "," not in workspace_id):
        raise ValueError(f"invalid workspace id {workspace_id!r}")


def read_keys_file(path: Path) -> KeysFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=KeysFile)
    except msgspec.DecodeError as error:
        raise ValueError(f"{path}: not a Tether keys file: {error}") from None


def create_key(path: Path, kind: KeyKind, workspace_id: str) -> str:
    """Make a credential, store its hash in ``path`` (created if missing, mode 0600), return it."""
    check_workspace(workspace_id)
    keys_file = read_keys_file(path) if path.exists() else KeysFile()
    key = new_key(kind)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys_file.keys.append(
        StoredKey(kind=kind, workspace_id=workspace_id, hash=digest(key), hint=key[:7],
                  created_at=now)
    )
    _write(path, keys_file)
    return key


def revoke_key(path: Path, fingerprint: str) -> StoredKey:
    """Remove the key ``fingerprint`` names (all 12 digits, or at least 6 that name one key)
    from ``path`` and return what was removed; ``ValueError`` says why nothing was."""
    wanted = fingerprint.strip().lower()
    if len(wanted) < MIN_FINGERPRINT_DIGITS or not all(c in "0123456789abcdef" for c in wanted):
        raise ValueError(f"a fingerprint is {MIN_FINGERPRINT_DIGITS} to {FINGERPRINT_DIGITS} "
                         f"hex digits, as `tether keys list` shows them; got {fingerprint!r}")
    if not path.exists():
        raise ValueError(f"{path} does not exist: there is no key to revoke")
    keys_file = read_keys_file(path)
    found = [k for k in keys_file.keys if k.fingerprint.startswith(wanted)]
    if not found:
        raise ValueError(f"no key in {path} has the fingerprint {wanted}")
    if len(found) > 1:
        raise ValueError(f"{len(found)} keys in {path} start with {wanted}: give more digits")
    keys_file.keys.remove(found[0])
    _write(path, keys_file)
    return found[0]


def _write(path: Path, keys_file: KeysFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(keys_file)) + b"\n")
    os.replace(tmp, path)
