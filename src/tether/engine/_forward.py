"""Writes for a session another node owns: carried to that node and answered as if local.

With a store that nodes share, a session's writes (attach, detach, run a command, terminate)
run in its actor, on the node that owns it. A node asked to make one for a session another
node owns sends the request to that node's inbox in the store and waits for the answer in its
own; the owner runs it as a local call and answers with the result or the error, which the
asking node returns or raises as its own. If no answer comes within ``timeout`` the caller
gets :class:`OwnerUnreachable` (503 ``unavailable``), and the write does not happen later: a
request carries its deadline, and the owner drops one it finds past it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ._errors import OwnerUnreachable, TetherError
from ._models import AttachedClient, CommandView, SessionDetail

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
    args: list[str]


class Reply(msgspec.Struct, frozen=True, tag="reply"):
    id: int
    result: bytes | None = None  # msgpack of the operation's result
    code: str | None = None  # else the error's envelope
    message: str = ""
    details: dict[str, Any] = {}


#: What each operation returns (``None``: nothing).
_RESULTS: dict[str, type[Any] | None] = {
    "attach": AttachedClient,
    "detach": None,
    "run_command": CommandView,
    "terminate": SessionDetail,
}


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
    """This node's side of forwarded writes: asking other nodes, and answering them."""

    def __init__(self, store: SessionStore,
                 operations: dict[str, Callable[..., Awaitable[Any]]],
                 timeout: float = FORWARD_TIMEOUT) -> None:
        self.store = store
        self.operations = operations  # op -> the local call that runs it here
        self.timeout = timeout
        self._waiting: dict[int, trio.MemorySendChannel[Reply]] = {}
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Request | Reply).decode
        self._errors = _error_classes()

    async def call(self, owner: str, op: str, workspace_id: str, session_id: str,
                   *args: str) -> Any:
        """Run ``op`` on ``owner`` and return (or raise) what it did there."""
        # The owner starts nothing past this deadline, a margin before this node gives up,
        # so a write this node answers 503 for does not happen after all.
        request = Request(secrets.randbits(62), self.store.node_id,
                          time.time() + self.timeout - _MARGIN, op,
                          [workspace_id, session_id, *args])
        send, receive = trio.open_memory_channel[Reply](1)
        self._waiting[request.id] = send
        try:
            with trio.move_on_after(self.timeout):
                try:
                    await self.store.send(owner, self._encode(request))
                except Exception as exc:  # the store is away: nothing was sent
                    raise OwnerUnreachable(session_id, owner) from exc
                reply = await receive.receive()
                return self._outcome(op, reply)
            raise OwnerUnreachable(session_id, owner)
        finally:
            del self._waiting[request.id]

    def _outcome(self, op: str, reply: Reply) -> Any:
        if reply.code is not None:
            cls = self._errors.get(reply.code, TetherError)
            error = cls.__new__(cls)
            TetherError.__init__(error, reply.message, reply.details)
            raise error
        kind = _RESULTS[op]
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
        run = self.operations.get(request.op)
        if run is None:
            log.warning("dropped a request for an unknown operation %r", request.op)
            return
        try:
            result = await run(*request.args)
        except TetherError as exc:
            reply = Reply(request.id, code=exc.code, message=exc.message, details=exc.details)
        except Exception:  # a bug, or a request this version cannot run: the asker gets 503
            log.exception("forwarded %s failed", request.op)
            reply = Reply(request.id, code=OwnerUnreachable.code,
                          message="The session's node could not run the request",
                          details={"node_id": self.store.node_id})
        else:
            reply = Reply(request.id, result=None if result is None else self._encode(result))
        try:
            await self.store.send(request.reply_to, self._encode(reply))
        except Exception as exc:  # the asker will time out and answer 503
            log.debug("answering node %s failed: %s", request.reply_to, exc)
