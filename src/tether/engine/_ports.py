"""The narrow typed edges between the engine's parts, so none imports another in a circle.

A session's record keeps its actor and its agent's link while the session is live, but needs
only these few calls of them; the actor and the link need only the few calls of the engine
they are given (``ActorHost`` in ``_actor.py``, ``LinkHost`` in ``_link.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._models import OperatorFrame, RunCommand

T = TypeVar("T")


class AgentTransport(Protocol):
    """What the engine needs from whatever carries an agent's messages. No call blocks."""

    def send_run_command(self, command: RunCommand) -> None:
        """Deliver a ``run_command`` to the agent."""

    def send_operator(self, frame: OperatorFrame) -> None:
        """Deliver an attached operator's ``input``, ``resize`` or ``signal`` to the agent."""

    def close(self, reason: str) -> None:
        """The session no longer uses this transport (``reason`` says why): close it."""


class SessionInbox(Protocol):
    """A live session's actor, as the rest of the engine talks to it: one message at a time."""

    def post(self, handler: Callable[..., object], *args: Any) -> None:
        """Queue ``handler(*args)`` to run in the actor; nobody waits for it."""

    async def call(self, handler: Callable[..., T], *args: Any) -> T:
        """Run ``handler(*args)`` in the actor and return (or raise) what it does."""

    def stop(self) -> None:
        """Return after the messages queued so far, leaving the session as it is."""


class AgentCarrier(Protocol):
    """The link that currently carries a session: its agent's transport."""

    @property
    def transport(self) -> AgentTransport: ...
