"""The agent wire protocol of ``/v1/agent``: one JSON text message per frame, tagged by ``type``.

This protocol is public: third-party agents, the simulator and the server all speak exactly
these frames. The module imports only msgspec so that anything can reuse it.

    frame = decode_agent_frame(data)      # raises msgspec.ValidationError / DecodeError
    payload = encode(Welcome(session_id=..., ...))

Decoding with the right union is the validation: an unknown ``type`` or a field of the wrong
type fails in the decoder with a precise message (``invalid_frame``). Text the server stores is
then held to the API's rules for the same text: 1 to N printable characters (no control or
format characters), N being 256 for ids, names and ``agent_version``, 320 for ``user_email``,
64 KiB for a ``command`` and 1024 for a goodbye ``reason``. A frame that breaks them is
answered with an ``invalid_parameter`` error naming the field, and nothing of it is kept.
"""

from __future__ import annotations

import datetime
from typing import Literal

import msgspec

__all__ = [
    "AgentFrame",
    "Background",
    "Command",
    "CommandResult",
    "Error",
    "Foreground",
    "Goodbye",
    "Heartbeat",
    "Hello",
    "Input",
    "Output",
    "Resize",
    "RunCommand",
    "ServerFrame",
    "Signal",
    "Telemetry",
    "TelemetryFrame",
    "Welcome",
    "decode_agent_frame",
    "decode_server_frame",
    "encode",
]


class Telemetry(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, gc=False):
    """A telemetry sample; every metric is optional. Also the ``telemetry`` of a heartbeat."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    disk_percent: float | None = None
    network_rx_bytes: int | None = None
    network_tx_bytes: int | None = None
    uptime_seconds: int | None = None


class _Frame(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, tag_field="type"):
    """Base of every frame: a JSON object whose ``type`` names the frame."""


# -- agent -> server ---------------------------------------------------------------------------


class Hello(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="hello"):
    """The first frame of every connection; ``resume_token`` resumes a session in grace."""

    machine_id: str
    machine_hostname: str
    resume_token: str | None = None
    agent_version: str | None = None


class Heartbeat(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="heartbeat", gc=False):
    """The agent is alive, optionally with a telemetry sample."""

    telemetry: Telemetry | None = None


class TelemetryFrame(
    _Frame, kw_only=True, frozen=True, omit_defaults=True, tag="telemetry", gc=False
):
    """A telemetry sample on its own (it also counts as a heartbeat)."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    disk_percent: float | None = None
    network_rx_bytes: int | None = None
    network_tx_bytes: int | None = None
    uptime_seconds: int | None = None


class Command(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="command"):
    """A command the agent ran. ``executed_at`` is RFC 3339 (UTC if no offset is given)."""

    command: str
    exit_code: int
    command_id: str | None = None
    executed_at: datetime.datetime | None = None
    user_email: str | None = None


class CommandResult(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="command_result"):
    """The outcome of a ``run_command`` the agent was sent (``duration_ms``: how long it ran)."""

    command_id: str
    exit_code: int
    duration_ms: int | None = None


class Output(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="output", gc=False):
    """Output the agent's session wrote: ``data`` at byte ``offset`` (of its UTF-8 encoding)
    of the session's one output stream, which starts at 0. The server appends a piece at the
    next offset, skips bytes it has (a resend after a resume), and answers an offset beyond
    the next with an ``output_gap`` error carrying ``expected_offset``."""

    offset: int
    data: str
    stream: Literal["stdout", "stderr"] = "stdout"
    command_id: str | None = None


class Background(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="background"):
    """The agent's app went to the background."""


class Foreground(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="foreground"):
    """The agent's app came back to the foreground."""


class Goodbye(_Frame, kw_only=True, frozen=True, omit_defaults=True, tag="goodbye"):
    """The agent leaves for good: its session ends (DISCONNECTED)."""

    reason: str | None = None


# -- both directions ---------------------------------------------------------------------------


class Error(_Frame, kw_only=True, frozen=True, tag="error"):
    """An error. From the agent, ``fatal`` ends its session in ERROR; the server sends it false.
    An ``output_gap`` from the server carries ``expected_offset``: resend output from there."""

    code: str
    message: str
    fatal: bool = False
    expected_offset: int | None = None


# -- server -> agent ---------------------------------------------------------------------------


class Welcome(_Frame, kw_only=True, frozen=True, tag="welcome"):
    """The answer to hello: the session, a fresh resume token and the timings (seconds)."""

    session_id: str
    resume_token: str
    heartbeat_interval: float
    heartbeat_timeout: float
    grace_period: float
    #: The next output offset the server expects: resend what was written from there on.
    #: Always present (0 for a new session), so an agent never has to guess.
    output_offset: int
    resumed: bool = False


class RunCommand(_Frame, kw_only=True, frozen=True, tag="run_command"):
    """Run this command for an attached operator; answer with ``command_result``."""

    command_id: str
    command: str
    user_email: str


class Input(_Frame, kw_only=True, frozen=True, tag="input"):
    """Text an attached operator typed: write it to the session's terminal."""

    data: str
    client_id: str


class Resize(_Frame, kw_only=True, frozen=True, tag="resize"):
    """An attached operator's terminal is now ``cols`` x ``rows``."""

    cols: int
    rows: int
    client_id: str


class Signal(_Frame, kw_only=True, frozen=True, tag="signal"):
    """An attached operator sends ``signal`` to what runs in the session's terminal."""

    signal: Literal["SIGINT", "SIGTERM", "SIGKILL", "SIGHUP"]
    client_id: str


AgentFrame = (
    Hello
    | Heartbeat
    | TelemetryFrame
    | Output
    | Command
    | CommandResult
    | Background
    | Foreground
    | Goodbye
    | Error
)
ServerFrame = Welcome | RunCommand | Input | Resize | Signal | Error

_encoder = msgspec.json.Encoder()
_agent_decoder = msgspec.json.Decoder(AgentFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)

#: Encode any frame to JSON bytes (send it as a text message).
encode = _encoder.encode
#: Decode a frame an agent sent (``str`` or ``bytes``).
decode_agent_frame = _agent_decoder.decode
#: Decode a frame the server sent (``str`` or ``bytes``).
decode_server_frame = _server_decoder.decode
