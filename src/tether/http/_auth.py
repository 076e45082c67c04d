"""Credentials: API keys (``cmd_...``) for the REST API, agent tokens (``agt_...``) for agents.

Each credential belongs to one workspace. The keys file stores only SHA-256 hashes of them (they
are 256-bit random strings, so a plain hash is enough; nothing to salt or stretch). A presented
key is hashed, looked up by its hash, and the stored hash compared with ``hmac.compare_digest``:
the time taken depends on the hash, never on how much of a real key a guess shares. Keys are
never logged.

Lookup: the first 4 bytes of the hash pick a bucket (almost always of one entry), and the full
hash is compared with ``hmac.compare_digest`` against each entry of that bucket.

Keys file (JSON)::

    {"keys": [{"kind": "api", "workspace_id": "ws_default", "hash": "sha256:<hex>",
               "hint": "cmd_AbC", "created_at": "2026-02-14T10:00:00Z"}]}
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from pathlib import Path

KeyKind = Literal["api", "agent"]
PREFIXES: dict[str, str] = {"api": "cmd_", "agent": "agt_"}
DEFAULT_WORKSPACE = "ws_default"


class StoredKey(msgspec.Struct, kw_only=True, frozen=True):
    """One credential as the keys file holds it: its hash, never the key."""

    kind: KeyKind
    workspace_id: str
    hash: str
    hint: str
    created_at: str


class KeysFile(msgspec.Struct, kw_only=True):
    keys: list[StoredKey] = msgspec.field(default_factory=list)


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(kind: KeyKind) -> str:
    """A fresh random credential with its kind's prefix."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def _workspace_ok(workspace_id: str) -> bool:
    return 0 < len(workspace_id) <= 256 and workspace_id.isprintable() and "," not in workspace_id


class KeyStore:
    """Who a bearer credential belongs to. API keys and agent tokens are separate tables."""

    def __init__(self) -> None:
        # kind -> hash prefix -> [(hash, workspace)]
        self._tables: dict[str, dict[str, list[tuple[str, str]]]] = {"api": {}, "agent": {}}

    def __len__(self) -> int:
        return sum(len(b) for table in self._tables.values() for b in table.values())

    def add_hash(self, kind: KeyKind, digest: str, workspace_id: str) -> None:
        self._tables[kind].setdefault(digest[:15], []).append((digest, workspace_id))

    def add_key(self, kind: KeyKind, key: str, workspace_id: str) -> None:
        """Trust a plain key (from the environment, or one just made)."""
        if not key.startswith(PREFIXES[kind]):
            raise ValueError(f"{kind} keys start with {PREFIXES[kind]!r}")
        if not _workspace_ok(workspace_id):
            raise ValueError(f"invalid workspace id {workspace_id!r}")
        self.add_hash(kind, _digest(key), workspace_id)

    def workspace(self, kind: KeyKind, authorization: str | None) -> str | None:
        """The workspace of an ``Authorization: Bearer <key>`` header, or ``None``."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        key = authorization[7:].strip()
        if not key.startswith(PREFIXES[kind]) or len(key) > 512:
            return None
        digest = _digest(key)
        found = None
        for stored, workspace_id in self._tables[kind].get(digest[:15], ()):
            if hmac.compare_digest(stored, digest):
                found = workspace_id
        return found

    # -- loading -------------------------------------------------------------------------------

    def load_file(self, path: Path) -> None:
        for stored in read_keys_file(path).keys:
            self.add_hash(stored.kind, stored.hash, stored.workspace_id)

    def load_env(self, environ: os._Environ[str] | dict[str, str] | None = None) -> None:
        """``TETHER_API_KEYS`` / ``TETHER_AGENT_TOKENS``: comma-separated ``key=workspace``."""
        env = os.environ if environ is None else environ
        for kind, var in (("api", "TETHER_API_KEYS"), ("agent", "TETHER_AGENT_TOKENS")):
            for pair in env.get(var, "").split(","):
                pair = pair.strip()
                if not pair:
                    continue
                key, eq, workspace_id = pair.partition("=")
                if not eq:
                    raise ValueError(f"{var}: expected key=workspace pairs")
                try:
                    self.add_key(kind, key.strip(), workspace_id.strip())  # type: ignore[arg-type]
                except ValueError as error:
                    raise ValueError(f"{var}: {error}") from None


# -- the keys file -------------------------------------------------------------------------------


def read_keys_file(path: Path) -> KeysFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=KeysFile)
    except msgspec.ValidationError as error:
        raise ValueError(f"{path}: not a Tether keys file: {error}") from None


def create_key(path: Path, kind: KeyKind, workspace_id: str) -> str:
    """Make a credential, store its hash in ``path`` (created if missing, mode 0600), return it."""
    if not _workspace_ok(workspace_id):
        raise ValueError(f"invalid workspace id {workspace_id!r}")
    keys_file = read_keys_file(path) if path.exists() else KeysFile()
    key = new_key(kind)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys_file.keys.append(
        StoredKey(kind=kind, workspace_id=workspace_id, hash=_digest(key), hint=key[:7],
                  created_at=now)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(keys_file)) + b"\n")
    os.replace(tmp, path)
    return key
