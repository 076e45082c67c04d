"""Who a bearer credential belongs to: the keys a running server trusts, and keeping them
current while it runs.

Each credential belongs to one workspace. A presented key is hashed, looked up by its hash, and
the stored hash compared with ``hmac.compare_digest``: the time taken depends on the hash,
never on how much of a real key a guess shares. Keys are never logged. Lookup: the first 4
bytes of the hash pick a bucket (almost always of one entry), and the full hash is compared
against each entry of that bucket.

The keys come from the environment (``TETHER_API_KEYS``, ``TETHER_AGENT_TOKENS``) and the keys
file (:mod:`._keysfile`). :class:`KeysFileWatcher` re-reads them when the file changes (it
looks every second) or on demand (``tether serve`` asks on SIGHUP), and swaps them in whole,
so a key revoked with ``tether keys revoke`` stops working within about a second. A file
that cannot be read then leaves the keys as they were (and says so in the log).
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

import trio

from ._keysfile import PREFIXES, KeyKind, check_workspace, digest, read_keys_file

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger("tether.keys")


class KeyStore:
    """Who a bearer credential belongs to. API keys and agent tokens are separate tables."""

    def __init__(self) -> None:
        # kind -> hash prefix -> [(hash, workspace)]
        self._tables: dict[str, dict[str, list[tuple[str, str]]]] = {"api": {}, "agent": {}}
        self._revocation_listeners: list[Callable[[frozenset[str]], None]] = []

    def __len__(self) -> int:
        return sum(len(b) for table in self._tables.values() for b in table.values())

    def count(self, kind: KeyKind) -> int:
        return sum(len(bucket) for bucket in self._tables[kind].values())

    def add_hash(self, kind: KeyKind, hashed: str, workspace_id: str) -> None:
        self._tables[kind].setdefault(hashed[:15], []).append((hashed, workspace_id))

    def add_key(self, kind: KeyKind, key: str, workspace_id: str) -> None:
        """Trust a plain key (from the environment, or one just made)."""
        if not key.startswith(PREFIXES[kind]):
            raise ValueError(f"{kind} keys start with {PREFIXES[kind]!r}")
        check_workspace(workspace_id)
        self.add_hash(kind, digest(key), workspace_id)

    def workspace(self, kind: KeyKind, authorization: str | None) -> str | None:
        """The workspace of an ``Authorization: Bearer <key>`` header, or ``None``."""
        found = self.credential(kind, authorization)
        return None if found is None else found[1]

    def credential(self, kind: KeyKind, authorization: str | None) -> tuple[str, str] | None:
        """The stored hash and the workspace of an ``Authorization: Bearer <key>`` header."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        key = authorization[7:].strip()
        if not key.startswith(PREFIXES[kind]) or len(key) > 512:
            return None
        presented = digest(key)
        found = None
        for stored, workspace_id in self._tables[kind].get(presented[:15], ()):
            if hmac.compare_digest(stored, presented):
                found = (stored, workspace_id)
        return found

    def on_revocation(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call ``listener`` with the hashes of the keys a reload took away (to close what
        was opened with them: an agent's socket outlives the check made when it opened)."""
        self._revocation_listeners.append(listener)

    def _hashes(self) -> set[str]:
        return {h for table in self._tables.values() for bucket in table.values()
                for h, _ in bucket}

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def read(cls, path: Path | None,
             environ: os._Environ[str] | dict[str, str] | None = None) -> KeyStore:
        """The keys of the environment and of the keys file ``path`` (if it exists)."""
        keys = cls()
        keys.load_env(environ)
        if path is not None and path.exists():
            keys.load_file(path)
        return keys

    def replace_with(self, other: KeyStore) -> None:
        """Trust exactly ``other``'s keys from now on (one assignment: no request sees a mix),
        and tell the revocation listeners which keys are gone."""
        gone = frozenset(self._hashes() - other._hashes())
        self._tables = other._tables
        if gone:
            for listener in self._revocation_listeners:
                listener(gone)

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


class KeysFileWatcher:
    """Keeps ``keys`` equal to the environment's keys and the keys file's, re-reading the file
    when its inode, size or modification time changes (looked at every ``interval`` seconds;
    0: only when :meth:`reload` is called)."""

    def __init__(self, keys: KeyStore, path: Path, interval: float = 1.0) -> None:
        self.keys = keys
        self.path = path
        self.interval = interval
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the keys now; ``False`` (and the old keys stay) if they cannot be read."""
        self._seen = self._stamp()
        try:
            fresh = KeyStore.read(self.path)
        except (OSError, ValueError) as error:
            log.error("keys not reloaded, the %d loaded before stay: %s", len(self.keys), error)
            return False
        self.keys.replace_with(fresh)
        log.info("keys reloaded from %s: %d API keys, %d agent tokens", self.path,
                 fresh.count("api"), fresh.count("agent"))
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        if not self.interval > 0:
            return
        while True:
            await trio.sleep(self.interval)
            if self._stamp() != self._seen:
                self.reload()
