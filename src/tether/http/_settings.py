"""What the HTTP layer can be told: body and frame limits, the agent socket's patience, the
attach streams' queues."""

from __future__ import annotations

import msgspec

MIB = 1024 * 1024


class HttpSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Limits of the HTTP layer (the engine's timings are in ``EngineConfig``)."""

    #: Largest request body; a bigger one is answered 413.
    max_body_bytes: int = MIB
    #: Largest agent frame; a bigger one is refused with an ``error`` frame (and counts as a
    #: violation). Frames over twice this are cut off by the server with close code 1009.
    max_frame_bytes: int = 64 * 1024
    #: Protocol violations (malformed, unknown or refused frames) an agent may make before its
    #: socket is closed and its session ends in ERROR.
    max_violations: int = 3
    #: Seconds an agent has to send ``hello`` after connecting.
    hello_timeout: float = 10.0
    #: ``run_command`` frames queued for an agent that does not read; past it, the socket closes.
    agent_send_queue: int = 1024
    #: Seconds without events after which an event stream (SSE) sends a keep-alive comment.
    sse_keepalive: float = 15.0
    #: Frames per second one agent socket may send, sustained (0: no limit), and the burst it
    #: may send at once. Past them the socket is read no faster than the rate: a flooding agent
    #: slows itself (TCP pushes back on it) and never the other agents.
    agent_frame_rate: float = 100.0
    agent_frame_burst: int = 200
    #: Bytes of output an attach stream may have waiting for its client; past it the stream
    #: is closed (4008 ``slow_consumer``) and the client re-attaches from its last offset.
    stream_queue_bytes: int = MIB
    #: The node's name: every response carries it in ``X-Tether-Node``, and ``/healthz``
    #: says it ("" for neither).
    node_id: str = ""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_frame_bytes", "max_violations", "agent_send_queue",
                     "stream_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.agent_frame_rate >= 0:
            raise ValueError("agent_frame_rate must be zero or positive")
        if self.agent_frame_burst < 1:
            raise ValueError("agent_frame_burst must be at least 1")
        if not self.hello_timeout > 0:
            raise ValueError("hello_timeout must be positive")
