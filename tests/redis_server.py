"""A real ``redis-server`` for a test: on a free 127.0.0.1 port, in the test's tmp dir, and
stopped by the test. Never a mock: Redis mode is tested against the server it runs on.

``.ci/run`` installs Debian's ``redis-server`` when it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tests.serving import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class RedisServer:
    """One running ``redis-server`` process."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def pause(self) -> None:
        """SIGSTOP: the server holds its sockets and answers nothing (a stalled Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(directory: Path, *extra: str) -> Iterator[RedisServer]:
    """Start ``redis-server`` (persistence off unless ``extra`` turns it on), wait until it
    answers PING, and stop it on the way out, whatever happened."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server "
                           "(.ci/run does this)")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", os.fspath(directory),
         "--save", "", "--appendonly", "no", "--daemonize", "no", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.01)
        yield RedisServer(proc, port)
    finally:
        proc.send_signal(signal.SIGCONT)  # a paused server could not take the SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
