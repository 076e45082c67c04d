"""Tether over HTTP: the Sessions REST API and the agent WebSocket, on Quart-Trio + Hypercorn.

    async with Engine(config) as engine:
        app = create_app(engine, keys, HttpSettings())
        await serve(app, server_config("127.0.0.1", 8080), shutdown_trigger=...)

Always imported by its full name, ``tether.http``; it never shadows the standard ``http``.
"""

from ._app import create_app, serve, server_config
from ._auth import KeysFileWatcher, KeyStore
from ._gc import DEFAULT_GC_YOUNG, tune_gc
from ._keysfile import (
    DEFAULT_WORKSPACE,
    KeyKind,
    KeysFile,
    StoredKey,
    create_key,
    new_key,
    read_keys_file,
    revoke_key,
)
from ._settings import HttpSettings

__all__ = [
    "DEFAULT_GC_YOUNG",
    "DEFAULT_WORKSPACE",
    "HttpSettings",
    "KeyKind",
    "KeyStore",
    "KeysFile",
    "KeysFileWatcher",
    "StoredKey",
    "create_app",
    "create_key",
    "new_key",
    "read_keys_file",
    "revoke_key",
    "serve",
    "server_config",
    "tune_gc",
]
