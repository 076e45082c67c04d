"""Calls carried to the node that must run them, and answered as if local.

With a store that nodes share, some work has one place: a session's writes (attach, detach,
run a command, terminate) run in its actor, on the node that owns it, and the webhooks API runs
on the node that delivers webhooks. A node asked for such a call sends the request to that
node's inbox in the store and waits for the answer in its own; the other node runs it as a
local call (an *operation* registered with :meth:`Forwarder.add`) and answers with the result
or the error, which the asking node returns or raises as its own. If no answer comes within
``timeout`` the caller gets the error it named (503 ``unavailable``), and the call does not
happen later: a request carries its deadline, and the other node drops one it finds past it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import trio

from ._errors import TetherError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._persist import SessionStore

log = logging.getLogger("tether.engine")

#: Seconds a node waits for the owner's answer.
FORWARD_TIMEOUT = 3.0
#: The owner starts no request later than this before its asker gives up.
_MARGIN = 1.0


class Request(msgspec.Struct, frozen=True, tag="request"):
    id: int  # random: a node restarted under the same id never takes an old answer for new
    reply_to: str  # the asking node
    deadline: float  # wall time after which the owner must not run it
    op: str
    args: list[Any]  # msgpack values


class Reply(msgspec.Struct, frozen=True, tag="reply"):
    id: int
    result: bytes | None = None  # msgpack of the operation's result
    code: str | None = None  # else the error's envelope
    message: str = ""
    details: dict[str, Any] = {}


class Operation(NamedTuple):
    run: Callable[..., Awaitable[Any]]  # the local call
    result: Any  # the type it returns (for msgpack to decode), ``None`` for nothing


def _error_classes() -> dict[str, type[TetherError]]:
    """Each error code's class (the most general one where several share a code)."""
    found: dict[str, type[TetherError]] = {}
    pending: list[type[TetherError]] = [TetherError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.code, cls)
        pending += cls.__subclasses__()
    return found


class Forwarder:
    """This node's side of forwarded calls: asking other nodes, and answering them."""

    def __init__(self, store: SessionStore, timeout: float = FORWARD_TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout
        self._operations: dict[str, Operation] = {}
        self._waiting: dict[int, trio.MemorySendChannel[Reply]] = {}
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Request | Reply).decode

    def add(self, op: str, run: Callable[..., Awaitable[Any]], result: Any) -> None:
        """Let other nodes ask this one for ``op``: ``run(*args)`` answers it here, returning
        a ``result`` (a type msgpack decodes; ``None`` when it returns nothing)."""
        if op in self._operations:
            raise ValueError(f"operation {op!r} is registered already")
        self._operations[op] = Operation(run, result)

    async def call(self, node: str, op: str, args: list[Any],
                   unreachable: Callable[[], TetherError]) -> Any:
        """Run ``op`` on ``node`` and return (or raise) what it did there; raise
        ``unreachable()`` if it does not answer in time (then it does not run it later)."""
        # The node starts nothing past this deadline, a margin before this one gives up, so
        # a call answered 503 here does not happen after all.
        request = Request(secrets.randbits(62), self.store.node_id,
                          time.time() + self.timeout - _MARGIN, op, args)
        send, receive = trio.open_memory_channel[Reply](1)
        self._waiting[request.id] = send
        try:
            with trio.move_on_after(self.timeout):
                try:
                    await self.store.send(node, self._encode(request))
                except Exception as exc:  # the store is away: nothing was sent
                    raise unreachable() from exc
                reply = await receive.receive()
                return self._outcome(op, reply)
            raise unreachable()
        finally:
            del self._waiting[request.id]

    def _outcome(self, op: str, reply: Reply) -> Any:
        if reply.code is not None:
            cls = _error_classes().get(reply.code, TetherError)  # now: every package's errors
            error = cls.__new__(cls)
            TetherError.__init__(error, reply.message, reply.details)
            raise error
        kind = self._operations[op].result
        if kind is None or reply.result is None:
            return None
        return msgspec.msgpack.decode(reply.result, type=kind)

    async def serve(self) -> None:
        """Take what arrives in this node's inbox: run requests, hand answers to askers."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    raw = await self.store.receive()
                except Exception as exc:  # the store is away: try again
                    log.debug("reading this node's inbox failed: %s", exc)
                    await trio.sleep(0.5)
                    continue
                if raw is None:
                    continue
                try:
                    message = self._decode(raw)
                except msgspec.DecodeError:
                    log.warning("dropped an unreadable message from the inbox")
                    continue
                if isinstance(message, Reply):
                    waiting = self._waiting.get(message.id)
                    if waiting is not None:
                        with contextlib.suppress(trio.WouldBlock):  # answered already
                            waiting.send_nowait(message)
                else:
                    nursery.start_soon(self._answer, message)

    async def _answer(self, request: Request) -> None:
        if time.time() > request.deadline:
            return  # the asking node has given up: the write must not happen now
        operation = self._operations.get(request.op)
        if operation is None:
            log.warning("dropped a request for an unknown operation %r", request.op)
            return
        try:
            result = await operation.run(*request.args)
        except TetherError as exc:
            reply = Reply(request.id, code=exc.code, message=exc.message, details=exc.details)
        except Exception:  # a bug, or a request this version cannot run: the asker gets 503
            log.exception("forwarded %s failed", request.op)
            reply = Reply(request.id, code="unavailable",
                          message="The node that runs it could not run the request",
                          details={"node_id": self.store.node_id})
        else:
            reply = Reply(request.id, result=None if result is None else self._encode(result))
        try:
            await self.store.send(request.reply_to, self._encode(reply))
        except Exception as exc:  # the asker will time out and answer 503
            log.debug("answering node %s failed: %s", request.reply_to, exc)
