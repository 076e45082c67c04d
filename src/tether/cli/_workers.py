"""``tether serve --redis URL --workers N``: N nodes on one port of one host, one process each.

One Python process uses one core. The parent binds the listening socket once and starts N
``tether serve`` processes that accept on it (the kernel hands each connection to one of
them): each is a node of its own on the same Redis, named ``<node id>-<i>``, so one command
uses every core and the nodes share the state as any nodes on one Redis do. The parent only
supervises: it passes SIGTERM, SIGINT and SIGHUP on to every worker and waits for them (each
drains as a lone node would); a worker that dies is started again under the same node id, so
it takes its sessions back at once, after a pause that doubles (up to 30 s) while it keeps
dying. A worker that refuses its arguments (exit status 2) stops the whole command.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

log = logging.getLogger("tether.cli")

_MAX_PAUSE = 30.0


def worker_argv(argv: list[str], fd: int, node_id: str) -> list[str]:
    """A worker's command line: ``argv`` (``serve``'s own) without ``--workers``, accepting
    on the inherited socket ``fd``, under its own node id (a later ``--node-id`` wins)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "tether.cli", *out, "--listen-fd", str(fd),
            "--node-id", node_id]


def listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every worker accepts on (inherited by them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` workers until a signal stops them: 0 if every one exited cleanly,
    else the first failure's status (1 for one killed by a signal)."""
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    log.info("serving on http://%s:%d with %d workers (nodes %s-0 to -%d)", host, port,
             args.workers, args.node_id, args.workers - 1)
    procs: dict[int, trio.Process] = {}
    statuses: list[int] = []
    stopping = False

    async def worker(index: int) -> None:
        pause = 0.5
        command = worker_argv(argv, sock.fileno(), f"{args.node_id}-{index}")
        while True:
            # Its own session: a terminal's Ctrl-C reaches the parent only, which passes it
            # on once (a second SIGINT would make the worker skip its drain).
            proc = procs[index] = await trio.lowlevel.open_process(
                command, pass_fds=(sock.fileno(),), start_new_session=True)
            status = await proc.wait()
            if status == 2 and not stopping:  # it refused its arguments, and would again
                stop_all(signal.SIGTERM)
            if not stopping:
                log.warning("worker %d exited with status %d; starting it again in %.1f s",
                            index, status, pause)
                await trio.sleep(pause)
                pause = min(_MAX_PAUSE, pause * 2)
            if stopping:
                statuses.append(status)
                return

    def stop_all(signum: int) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    async def relay(signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            stop_all(signum)

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as outer:
                outer.start_soon(relay, signals)
                async with trio.open_nursery() as workers:
                    for index in range(args.workers):
                        workers.start_soon(worker, index)
                outer.cancel_scope.cancel()
    finally:
        for proc in procs.values():  # the parent itself failed: leave no worker behind
            if proc.returncode is None:
                proc.kill()
        sock.close()
    failed = [status for status in statuses if status != 0]
    return 0 if not failed else failed[0] if failed[0] > 0 else 1
