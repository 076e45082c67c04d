"""Webhook receivers simulated in-process, for the fault simulation: healthy, flaky, failing
and hanging ones, and what each received.

They stand in for the HTTP client (``Webhooks(client_factory=receivers.client)``) and keep its
contract: ``post`` returns a status, raises ``ConnectError`` when the "connection" is reset and
``Timeout`` once the attempt's budget (``timeout`` trio seconds) has run out. Everything else
(queues, lanes, retries with backoff, disabling, the deliveries log) is the real service.

A flaky receiver's answer to an attempt is a hash of the seed, the event's machine, sequence
and type, and the attempt's number, never of the order tasks ran in: a seed gives the same
answers in every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import trio

from tether.webhooks import HTTPError, Timeout

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

#: Receiver kinds: answers 204 / fails ~35% of attempts (500, reset, too slow) / always 503 /
#: never answers.
HEALTHY, FLAKY, FAILING, HANGING = "healthy", "flaky", "failing", "hanging"
KINDS = (HEALTHY, FLAKY, FAILING, HANGING)


class _Data(msgspec.Struct):
    session_id: str = ""
    machine_id: str = ""
    sequence: int = 0


class _Body(msgspec.Struct):
    """The part of a webhook body a receiver looks at."""

    id: str
    type: str
    data: _Data


_decode = msgspec.json.Decoder(_Body).decode


class ConnectionReset(HTTPError):
    """The simulated connection broke before a response arrived."""


@dataclass
class Receiver:
    """One simulated endpoint: what it answered, and what it accepted (2xx), in order."""

    kind: str
    url: str
    #: (event id, session id, sequence) of each event it answered 2xx to, in arrival order.
    accepted: list[tuple[str, str, int]] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0  # answered non-2xx, reset, or timed out
    _tries: dict[str, int] = field(default_factory=dict)  # event id -> attempts so far


class Receivers:
    """Every simulated receiver of a run, by URL; :meth:`client` is the client factory."""

    def __init__(self, seed: int, timeout: float) -> None:
        self.seed = seed
        self.timeout = timeout
        self.by_url: dict[str, Receiver] = {}
        self.named: dict[str, Receiver] = {}

    def add(self, kind: str, name: str) -> Receiver:
        """A receiver at ``http://<name>.sim.invalid/hook`` (never resolved: nothing leaves)."""
        if kind not in KINDS:
            raise ValueError(f"unknown receiver kind {kind!r}")
        url = f"http://{name}.sim.invalid/hook"
        receiver = self.by_url[url] = self.named[name] = Receiver(kind, url)
        return receiver

    def client(self, connections: int) -> _Client:
        return _Client(self)

    def _roll(self, body: _Body, attempt: int) -> float:
        """A number in [0, 1) that depends only on the seed, the event and the attempt."""
        key = f"{self.seed}:{body.data.machine_id}:{body.data.sequence}:{body.type}:{attempt}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    async def answer(self, url: str, body: bytes) -> int:
        receiver = self.by_url[url]
        receiver.attempts += 1
        event = _decode(body)
        attempt = receiver._tries.get(event.id, 0) + 1
        receiver._tries[event.id] = attempt
        kind = receiver.kind
        if kind == HANGING:
            receiver.refused += 1
            await self._time_out()
        # Answers take no simulated time (but a checkpoint, so other tasks interleave): a
        # latency per delivery would make each one its own MockClock jump and triple the
        # run's wall time; overlapping lanes come from the timeouts and retries anyway.
        await trio.lowlevel.checkpoint()
        if kind == FAILING:
            receiver.refused += 1
            return 503
        if kind == FLAKY:
            roll = self._roll(event, attempt)
            if roll < 0.35:
                receiver.refused += 1
                if roll < 0.15:
                    return 500
                if roll < 0.25:
                    raise ConnectionReset("connection reset by the simulated receiver")
                await self._time_out()  # too slow: answers after the budget ran out
        receiver.accepted.append((event.id, event.data.session_id, event.data.sequence))
        del receiver._tries[event.id]
        return 204

    async def _time_out(self) -> None:
        await trio.sleep(self.timeout)
        raise Timeout(f"timeout after {self.timeout:g} s waiting for the response")


class _Client:
    """One endpoint's client (the factory's product): every post goes to a receiver."""

    def __init__(self, receivers: Receivers) -> None:
        self._receivers = receivers

    async def __aenter__(self) -> _Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   addresses: tuple[str, ...] = ()) -> int:
        return await self._receivers.answer(url, body)
