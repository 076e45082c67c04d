"""An attached operator's input, resize and signal, on their way to the agent: checked, then
written to the agent's transport in the order they came (no actor on the way), on this node or,
with a store, on the node that runs the session (a forwarded call, one after another)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._errors import ClientNotFound, ClientNotOperator, InvalidParameter, SessionNotActive
from ._models import SIGNALS, OperatorInput, OperatorResize, OperatorSignal, Status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._models import OperatorFrame
    from ._record import SessionRecord
    from ._table import SessionTable

log = logging.getLogger("tether.engine")

#: A terminal's columns and rows, as a resize may set them.
MAX_TERMINAL_SIDE = 10_000
#: Bytes of one ``input``.
MAX_INPUT = 64 * 1024

_STREAMABLE = (Status.CONNECTED, Status.BACKGROUND)


class OperatorDesk:
    """Operators' frames for the engine's ``send_operator``, and for other nodes' streams."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        #: With a store: how to ask a session's owner (``call_owner(op, workspace, session,
        #: *args)``).
        self.call_owner: Callable[..., Awaitable[Any]] | None = None

    async def send(self, workspace_id: str, session_id: str, frame: OperatorFrame) -> None:
        """Pass an attached operator's frame to the agent, here or on the node that runs the
        session (in order: no actor on the way here; one call after another there)."""
        _check_operator_frame(frame)
        rec = self.table.get(workspace_id, session_id)
        if rec.owner is not None and not rec.status.final and self.call_owner is not None:
            await self.call_owner("send_operator", workspace_id, session_id,
                                  *_operator_args(frame))
            return
        self._send_here(rec, frame)

    async def send_here(self, workspace_id: str, session_id: str, kind: str,
                                 client_id: str, value: Any, extra: Any) -> None:
        """Another node's stream's operator frame (as ``_operator_args`` made it), for this
        node's agent."""
        frame: OperatorFrame
        if kind == "input":
            frame = OperatorInput(data=value, client_id=client_id)
        elif kind == "resize":
            frame = OperatorResize(cols=value, rows=extra, client_id=client_id)
        else:
            frame = OperatorSignal(signal=value, client_id=client_id)
        _check_operator_frame(frame)
        self._send_here(self.table.get(workspace_id, session_id), frame)

    def _send_here(self, rec: SessionRecord, frame: OperatorFrame) -> None:
        client = None if rec.clients is None else rec.clients.get(frame.client_id)
        if client is None:
            raise ClientNotFound(frame.client_id)
        if client.mode != "operator":
            raise ClientNotOperator(frame.client_id)
        link = rec.link
        if rec.status not in _STREAMABLE or link is None:
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND")
        try:
            link.transport.send_operator(frame)
        except Exception:
            # The transport's own task sees it fail and loses it (the session enters
            # GRACE_PERIOD); the operator is told the agent is not there.
            log.warning("session %s: agent transport failed to send %s", rec.session_id,
                        type(frame).__name__, exc_info=True)
            raise SessionNotActive(rec.status.value, "CONNECTED or BACKGROUND") from None


def _check_operator_frame(frame: OperatorFrame) -> None:
    if isinstance(frame, OperatorInput):
        if len(frame.data) > MAX_INPUT:
            raise InvalidParameter("data", f"must be at most {MAX_INPUT} characters")
    elif isinstance(frame, OperatorResize):
        for name, value in (("cols", frame.cols), ("rows", frame.rows)):
            if not 1 <= value <= MAX_TERMINAL_SIDE:
                raise InvalidParameter(name, f"must be 1 to {MAX_TERMINAL_SIDE}")
    elif frame.signal not in SIGNALS:
        raise InvalidParameter("signal", "must be one of " + ", ".join(SIGNALS))


def _operator_args(frame: OperatorFrame) -> tuple[str, str, Any, Any]:
    """An operator frame as a forwarded call's arguments (plain msgpack values)."""
    if isinstance(frame, OperatorInput):
        return "input", frame.client_id, frame.data, None
    if isinstance(frame, OperatorResize):
        return "resize", frame.client_id, frame.cols, frame.rows
    return "signal", frame.client_id, frame.signal, None
