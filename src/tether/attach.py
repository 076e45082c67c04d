"""The attach stream protocol of ``/v1/sessions/{session_id}/attach``: one JSON text message per
frame, tagged by ``type``, between the server and a person attached to a session.

This protocol is public: clients (a terminal in a browser, the simulator's operators and
observers) speak exactly these frames. Like :mod:`tether.wire` it imports only msgspec.

Server -> client: ``attached`` once, then ``gap`` (if the offset asked for is no longer
retained), the replayed ``output`` and the live ``output``, with ``status`` for every
transition of the session, ``command_accepted`` / ``command_result`` and ``error``. Client ->
server, operators only: ``input``, ``run_command``, ``resize``, ``signal``. Output offsets are
byte offsets of the UTF-8 encoding of the session's one output stream: a client that re-attaches
with ``offset=`` the ``offset`` + bytes of the last ``output`` it got misses nothing and gets
nothing twice.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Attached",
    "ClientFrame",
    "CommandAccepted",
    "CommandResult",
    "Error",
    "Gap",
    "Input",
    "Output",
    "Resize",
    "RunCommand",
    "ServerFrame",
    "Signal",
    "Status",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
]


class _Frame(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    """Base of every frame: a JSON object whose ``type`` names the frame."""


# -- server -> client --------------------------------------------------------------------------


class Attached(_Frame, kw_only=True, frozen=True, tag="attached"):
    """The stream is open: as ``client_id`` in ``mode``; output follows from ``offset``
    (``first_offset``: the oldest byte retained), the session is in ``status``."""

    client_id: str
    mode: Literal["operator", "observer"]
    offset: int
    first_offset: int
    status: str


class Output(_Frame, kw_only=True, frozen=True, tag="output", gc=False):
    """Output the session wrote: ``data`` from byte ``offset`` of its stream."""

    offset: int
    data: str
    stream: Literal["stdout", "stderr"] = "stdout"
    command_id: str | None = None


class Gap(_Frame, kw_only=True, frozen=True, tag="gap"):
    """Bytes ``from`` to ``to`` were asked for but are no longer retained."""

    from_: int = msgspec.field(name="from")
    to: int


class Status(_Frame, kw_only=True, frozen=True, tag="status"):
    """The session changed status (``reason``: why). A final one ends the stream (1000)."""

    status: str
    reason: str | None = None


class CommandAccepted(_Frame, kw_only=True, frozen=True, tag="command_accepted"):
    """The ``run_command`` this client sent was sent on to the agent as ``command_id``."""

    command_id: str


class CommandResult(_Frame, kw_only=True, frozen=True, tag="command_result"):
    """An operator's command came back from the agent."""

    command_id: str
    exit_code: int


class Error(_Frame, kw_only=True, frozen=True, tag="error"):
    """A frame of this client's was refused (``forbidden``: an observer asked to act)."""

    code: str
    message: str


# -- client -> server (operators only) ---------------------------------------------------------


class Input(_Frame, kw_only=True, frozen=True, tag="input"):
    """Text to type into the session's terminal."""

    data: str


class RunCommand(_Frame, kw_only=True, frozen=True, tag="run_command"):
    """A command for the agent to run (answered ``command_accepted``, then ``command_result``)."""

    command: str


class Resize(_Frame, kw_only=True, frozen=True, tag="resize"):
    """The client's terminal is now ``cols`` x ``rows``."""

    cols: int
    rows: int


class Signal(_Frame, kw_only=True, frozen=True, tag="signal"):
    """A signal for what runs in the session's terminal."""

    signal: Literal["SIGINT", "SIGTERM", "SIGKILL", "SIGHUP"]


ServerFrame = Attached | Output | Gap | Status | CommandAccepted | CommandResult | Error
ClientFrame = Input | RunCommand | Resize | Signal

_encoder = msgspec.json.Encoder()
_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)

#: Encode any frame to JSON bytes (send it as a text message).
encode = _encoder.encode
#: Decode a frame a client sent (``str`` or ``bytes``).
decode_client_frame = _client_decoder.decode
#: Decode a frame the server sent (``str`` or ``bytes``).
decode_server_frame = _server_decoder.decode
