"""The wire driver: simulated agents over real WebSockets (trio-websocket) in this process.

One task per agent follows its :class:`~tether.sim._agent.AgentRun`; each connection also has
a reader task (trio-websocket's own background task aside) that answers ``run_command`` and
notices ``error`` frames and closes the agent did not ask for. Connection attempts are bounded
(``connect_concurrency``) so a few thousand agents starting at once do not overflow the
server's listen backlog.

Operators visiting a machine (:class:`~tether.sim._operator.OperatorRun`) use the REST API with
``api_key`` (without one there are none). Their steps run in the visited agent's task, between
its own steps: an accepted command is followed by waiting until the agent got its
``run_command`` (it answers next), so nothing the agent does in between can lose it. A loaded
server makes operators late: none starts a step after the run's end, and the run is not
:attr:`~WireFleet.ready` (its expectations are not read) while a step is still under way.

A close with reason ``terminated`` or ``replaced`` (the server ended the session under the
agent), or a refused resume, is counted apart from errors (:attr:`AgentRun.server_ends`); the
agent says a fresh hello after a short backoff, as a real agent would.

Output: an agent sends its outbox (``output`` frames) before each step's own frame and right
after a welcome (a resume resends from its ``output_offset``); an ``output_gap`` error from the
server is counted as an error, as every unexpected error frame is. With ``api_key``, operators
also watch their client's attach stream and observers (:class:`~tether.sim._stream.ObserverRun`)
attach their own, on a node other than the agent's; a stream the server closes with 4008
``slow_consumer`` or 1012 ``session_moved`` is re-attached at once from its offset. Each
client's bytes are checked against the agent's when the run is over (:meth:`output_result`).

A cluster (``url`` naming several nodes): agents are spread over the nodes (agent ``k`` of the
fleet starts on node ``k mod n``) and every reconnection goes to the next node, so a dropped
agent comes back on another node; an operator uses the REST API of a node other than its
agent's. A close that says the node went away (killed: no close frame; restarting or draining:
1001, 1012, ...) is not an error: the agent resumes with its token on the next node, trying
again with a backoff while connections fail (:meth:`AgentRun.node_lost`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import httpx
import msgspec
import trio
import trio_websocket

from tether import attach, wire

from ._agent import INF, RESUME_ASKED, SERVER_ENDS, AgentRun, Step
from ._operator import OperatorRun, OpStep
from ._stream import DEFAULT_RETENTION, ObserverRun, ObsStep, output_stats

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._agent import SessionExpect
    from ._behaviour import AgentPlan
    from ._stream import StreamClient


class WireConfig(msgspec.Struct, kw_only=True, frozen=True):
    """How a share of agents reaches the server, and for how long it runs."""

    #: The server's base URL (``http://host:port``), or a cluster's nodes', comma-separated.
    url: str
    agent_token: str
    duration: float
    heartbeat_every: float | None = None
    agent_path: str = "/v1/agent"
    connect_concurrency: int = 64
    hello_timeout: float = 30.0
    settle: float = 1.0
    #: An API key of the agents' workspace, for operators; ``None``: no operator activity.
    api_key: str | None = None
    #: How long an accepted operator command may take to reach its agent as run_command.
    run_command_timeout: float = 10.0
    api_concurrency: int = 32
    #: What the server keeps of each session's output (its ``--output-buffer-bytes``): a
    #: stream's ``gap`` is honest only for bytes older than this.
    output_retention: int = DEFAULT_RETENTION

    @property
    def urls(self) -> list[str]:
        """The nodes' base URLs (one for a single server)."""
        return node_urls(self.url)

    @property
    def ws_urls(self) -> list[str]:
        """Each node's agent socket URL."""
        return ["ws" + base.removeprefix("http") + self.agent_path for base in self.urls]

    @property
    def ws_url(self) -> str:
        return self.ws_urls[0]


def node_urls(text: str) -> list[str]:
    """``--url``'s nodes: one base URL or several, comma-separated (each http:// or https://).
    Raises ValueError naming what is wrong."""
    urls = [u.strip().rstrip("/") for u in text.split(",")]
    for url in urls:
        if not url:
            raise ValueError(f"--url {text!r}: an empty URL in the list")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url {url!r}: not an http:// or https:// URL")
    if len(set(urls)) != len(urls):
        raise ValueError(f"--url {text!r}: a node is named twice")
    return urls


class WireFleet:
    """Agents of a fleet (any slice of it) driven over WebSockets.

    :meth:`run` returns once the run's ``duration`` (plus ``settle``) is over and sets
    :attr:`ready`; the agents go on heartbeating until :meth:`finish`, when every connected
    agent says goodbye and closes. Run it in a nursery with ``nursery.start``.
    """

    def __init__(self, config: WireConfig, plans: Sequence[AgentPlan]) -> None:
        self.config = config
        self.plans = list(plans)
        self.runs = [AgentRun(p, stop_at=config.duration, heartbeat_every=config.heartbeat_every)
                     for p in self.plans]
        self.notes: list[str] = []
        visited = sum(1 for p in self.plans if p.visits)
        if config.api_key is None and visited:
            self.notes.append(f"operator visits to {visited} machines skipped: no --api-key")
        self.operators = [
            OperatorRun(r, config.output_retention)
            if r.plan.visits and config.api_key is not None else None
            for r in self.runs
        ]
        watched = sum(1 for p in self.plans if p.watch)
        if config.api_key is None and watched:
            self.notes.append(f"observers of {watched} machines skipped: no --api-key")
        self.observers = [
            ObserverRun(r, config.output_retention)
            if r.plan.watch and config.api_key is not None else None
            for r in self.runs
        ]
        self._streams: dict[StreamClient, trio_websocket.WebSocketConnection] = {}
        #: Each client's stream task (its tries to open, and the stream), to stop it at once.
        self._stream_tasks: dict[StreamClient, trio.CancelScope] = {}
        self._api_headers = [(b"authorization", f"Bearer {config.api_key}".encode())]
        self.stream_refused = 0
        self._urls = config.urls
        self._ws_urls = config.ws_urls
        #: Each agent's node (an index into the URLs), and whether it has connected before.
        self._node = [p.index % len(self._urls) for p in self.plans]
        self._tried = [False] * len(self.runs)
        self._apis: list[httpx.AsyncClient] = []
        self._operating = 0  # operator steps under way
        self._operated = trio.Event()  # set when the last step under way is over
        self._sockets: list[trio_websocket.WebSocketConnection | None] = [None] * len(self.runs)
        self._wake = [trio.Event() for _ in self.runs]
        self._finished = trio.Event()  # set by finish(): the people stop too
        #: The run_commands each operated agent got, and a lot for those waiting to see one
        #: (or the agent's socket change).
        self._commands_seen: dict[int, set[str]] = {}
        self._agent_news = trio.lowlevel.ParkingLot()
        self._connect_limit = trio.Semaphore(config.connect_concurrency)
        self._headers = [(b"authorization", f"Bearer {config.agent_token}".encode())]
        self.messages = 0
        self.errors = 0
        self.problems: list[str] = []
        self.connected = 0
        self.connected_peak = 0
        self._counted = [False] * len(self.runs)  # counted in ``connected``
        self.start = 0.0
        self.start_wall = 0.0
        self.finishing = False
        self.ready = trio.Event()
        self.done = trio.Event()

    def now(self) -> float:
        return trio.current_time() - self.start

    def _error(self, text: str, count: bool = True) -> None:
        self.errors += count
        if len(self.problems) < 100:
            self.problems.append(text)

    def stream_clients(self) -> list[StreamClient]:
        clients = [c for op in self.operators if op is not None for c in op.streams]
        clients += [c for ob in self.observers if ob is not None for c in ob.clients]
        return clients

    def output_result(self) -> dict[str, int]:
        """The output and stream counts of :class:`~tether.sim.SimResult` so far."""
        counts, _ = output_stats(self.runs, self.stream_clients(), self.stream_refused)
        return counts

    def sessions(self) -> list[SessionExpect]:
        return [s for run in self.runs for s in run.sessions]

    def by_status(self) -> dict[str, int]:
        """Sessions by the status their agents' actions imply (GRACE_PERIOD not aged)."""
        counts: dict[str, int] = {}
        for run in self.runs:
            for s in run.sessions:
                counts[s.status] = counts.get(s.status, 0) + 1
        return counts

    def finish(self) -> None:
        """Stop: connected agents say goodbye and close."""
        self.finishing = True
        self._finished.set()
        for wake in self._wake:
            wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        if config.api_key is not None and any(op is not None for op in self.operators):
            limits = httpx.Limits(max_connections=config.api_concurrency,
                                  max_keepalive_connections=config.api_concurrency)
            self._apis = [httpx.AsyncClient(
                base_url=url, timeout=30, limits=limits,
                headers={"Authorization": f"Bearer {config.api_key}"},
            ) for url in self._urls]
        self.start = trio.current_time()
        self.start_wall = time.time()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(self.runs)):
                    nursery.start_soon(self._agent, i)
                await trio.sleep_until(self.start + config.duration + config.settle)
                while self._operating:  # none starts after the end: this drains
                    self._operated = trio.Event()
                    await self._operated.wait()
                _, found = output_stats(self.runs, self.stream_clients(), 0)
                for text in found:
                    self._error(text, count=False)
                self.ready.set()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for api in self._apis:
                    await api.aclose()
        self.done.set()

    # -- one agent -------------------------------------------------------------------------

    async def _agent(self, i: int) -> None:
        run = self.runs[i]
        async with trio.open_nursery() as nursery:
            if self.operators[i] is not None or self.observers[i] is not None:
                nursery.start_soon(self._people, i)
            while not self.finishing:
                due = run.due
                if self.start + due > trio.current_time():
                    wake = self._wake[i] = trio.Event()
                    with trio.move_on_at(self.start + due if due < INF else math.inf):
                        await wake.wait()
                    continue
                now = max(due, self.now())
                step = run.take(now)
                if step is None:
                    continue
                try:
                    await self._perform(nursery, i, run, step, now)
                except (trio_websocket.ConnectionClosed, trio.BrokenResourceError) as error:
                    ws = self._sockets[i]
                    self._set_socket(i, None)  # the reader now ignores the close
                    reason = _close_reason(error, ws)
                    if reason in SERVER_ENDS:
                        run.ended_by_server(self.now(), reason)
                    elif _node_went_away(error, ws):
                        run.node_lost(self.now())
                    elif run.closed_by_server():
                        self._error(f"agent {i}: {step.value}: connection closed ({error})")
                self._recount(i)
            ws = self._sockets[i]
            if ws is not None and run.connected:
                self._set_socket(i, None)
                with trio.move_on_after(5):
                    try:
                        await ws.send_message(wire.encode(wire.Goodbye(reason="sim_finished")))
                        self.messages += 1
                    except trio_websocket.ConnectionClosed:
                        pass
                    await ws.aclose()
                self._recount(i, False)
            nursery.cancel_scope.cancel()

    def _set_socket(self, i: int, ws: trio_websocket.WebSocketConnection | None) -> None:
        self._sockets[i] = ws
        if self._commands_seen:  # an operator waiting for a run_command stops at a change
            self._agent_news.unpark_all()

    def _recount(self, i: int, connected: bool | None = None) -> None:
        """Keep ``connected`` in step with agent ``i`` (or with ``connected``), whichever task
        noticed the change."""
        now = self.runs[i].connected if connected is None else connected
        if now != self._counted[i]:
            self._counted[i] = now
            self.connected += 1 if now else -1
            if self.connected > self.connected_peak:
                self.connected_peak = self.connected

    async def _send(self, i: int, frame: wire.AgentFrame) -> None:
        ws = self._sockets[i]
        if ws is None:  # the reader saw it close during the step: as a send on it would
            raise trio.BrokenResourceError("the agent's socket closed")
        await ws.send_message(wire.encode(frame).decode())
        self.messages += 1

    async def _close(self, i: int) -> None:
        ws = self._sockets[i]
        self._set_socket(i, None)  # the reader now ignores the close
        if ws is not None:
            with trio.move_on_after(5):
                await ws.aclose(1001, "simulated drop")

    async def _send_output(self, i: int, run: AgentRun) -> None:
        """Send the agent's outbox: its output frames, in order."""
        while run.outbox:
            piece = run.outbox.pop(0)
            await self._send(i, wire.Output(offset=piece.offset, data=piece.data,
                                            stream=piece.stream, command_id=piece.command_id))

    async def _perform(self, nursery: trio.Nursery, i: int, run: AgentRun, step: Step,
                       now: float) -> None:
        if self._sockets[i] is not None:
            await self._send_output(i, run)
        else:
            run.outbox.clear()  # no socket (a drop's step): the log keeps it for the resume
        if step is Step.HEARTBEAT:
            t = run.telemetry
            assert t is not None
            await self._send(i, wire.Heartbeat(telemetry=wire.Telemetry(
                cpu_percent=t[0], memory_percent=t[1], disk_percent=t[2],
                network_rx_bytes=t[3], network_tx_bytes=t[4], uptime_seconds=t[5],
            )))
        elif step is Step.HELLO or step is Step.RESUME:
            await self._hello(nursery, i, run, step)
        elif step is Step.COMMAND or step is Step.RESULT:
            assert run.command is not None
            command_id, command, exit_code = run.command
            if step is Step.COMMAND:
                await self._send(i, wire.Command(command_id=command_id, command=command,
                                                 exit_code=exit_code))
            else:
                await self._send(i, wire.CommandResult(command_id=command_id,
                                                       exit_code=exit_code))
        elif step is Step.BACKGROUND:
            await self._send(i, wire.Background())
        elif step is Step.FOREGROUND:
            await self._send(i, wire.Foreground())
        elif step is Step.DROP or step is Step.RESTART:
            await self._close(i)
        elif step is Step.GOODBYE:
            await self._send(i, wire.Goodbye(reason="simulated goodbye"))
            await self._close(i)
        elif step is Step.FATAL:
            await self._send(i, wire.Error(code="sim_crash", message="simulated fatal error",
                                           fatal=True))
            await self._close(i)

    # -- an operator visiting the agent's machine ------------------------------------------

    async def _people(self, i: int) -> None:
        """The operator and the observer of agent ``i``'s machine, in a task of their own: a
        person's slow step (a stream whose node went away, a write its owner answers late)
        never holds back the agent's heartbeats, as it would not on a real machine."""
        op, obs = self.operators[i], self.observers[i]
        async with trio.open_nursery() as nursery:  # their streams
            while not self.finishing:
                due, who = INF, 0
                if op is not None and op.due < due:
                    due, who = op.due, 1
                if obs is not None and obs.due < due:
                    due, who = obs.due, 2
                if self.start + due > trio.current_time():
                    with trio.move_on_at(self.start + due if due < INF else math.inf):
                        await self._finished.wait()
                    continue
                self._operating += 1
                try:
                    if op is not None and who == 1:
                        op_step = op.take(max(due, self.now()))
                        if op_step is not None:
                            await self._operate(nursery, i, op, op_step)
                    elif obs is not None:
                        obs_step = obs.take(max(due, self.now()))
                        if obs_step is not None:
                            await self._observe(nursery, i, obs, obs_step)
                finally:
                    self._operating -= 1
                    if not self._operating:
                        self._operated.set()
            nursery.cancel_scope.cancel()

    async def _operate(self, nursery: trio.Nursery, i: int, op: OperatorRun,
                       step: OpStep) -> None:
        """An operator's step, and its stream's: opened after the attach, dropped and
        re-attached from its offset before the visit's first command, let go with the
        client."""
        stream = op.stream
        if step is OpStep.RUN and op.reattach and stream is not None:
            await self._close_stream(stream)
            await self._open_stream(nursery, i, stream)
        await self._operator_call(i, op, step)
        if op.stream is not None and op.stream is not stream:
            await self._open_stream(nursery, i, op.stream)
        elif stream is not None and op.stream is None:
            await self._close_stream(stream)

    async def _observe(self, nursery: trio.Nursery, i: int, obs: ObserverRun,
                       step: ObsStep) -> None:
        client = obs.client
        assert client is not None
        if step is ObsStep.ATTACH or step is ObsStep.REATTACH:
            if await self._open_stream(nursery, i, client):
                obs.done()
            else:
                obs.refused()
        else:
            await self._close_stream(client)
            obs.done()

    # -- attach streams ----------------------------------------------------------------------

    def _stream_url(self, i: int, client: StreamClient, shift: int = 0) -> str:
        """The client's stream on a node other than the agent's (if there are two; ``shift``:
        so many nodes further on)."""
        base = self._urls[(self._node[i] + 1 + shift) % len(self._urls)]
        query = ([f"client_id={client.client_id}"] if client.mode == "operator"
                 else [f"mode=observer&user_email={client.user_email}"])
        if client.offset is not None:
            query.append(f"offset={client.offset}")
        return ("ws" + base.removeprefix("http")
                + f"/v1/sessions/{client.session.session_id}/attach?" + "&".join(query))

    async def _open_stream(self, nursery: trio.Nursery, i: int, client: StreamClient) -> bool:
        """Open a stream for ``client`` (from its offset, if it had one); False if the server
        refused it."""
        opened: bool = await nursery.start(self._stream, i, client)
        return opened

    async def _close_stream(self, client: StreamClient) -> None:
        """The person closes the stream (an observer's client is detached with it), or stops
        trying to open it again: a stream between two tries must not come back later, beside
        the next one opened for the same client."""
        ws = self._streams.pop(client, None)
        if ws is not None:
            self._stream_gone(client)
            with trio.move_on_after(5):
                await ws.aclose()
        scope = self._stream_tasks.pop(client, None)
        if scope is not None:
            scope.cancel()

    @staticmethod
    def _stream_gone(client: StreamClient) -> None:
        if client.mode == "observer" and client.open:
            client.session.clients -= 1
        client.closed()

    async def _stream(self, i: int, client: StreamClient,
                      task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """One stream of ``client``'s, read to its close; re-attached from its offset when
        the server closes it 4008 (too slow), 1012 (the session moved) or, in a cluster, its
        node went away (:data:`_NODE_GONE`: then on the next node)."""
        started = False
        what = f"{client.mode} {client.user_email} on {client.session.session_id}"

        def attached() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started(True)

        with trio.CancelScope() as scope:
            self._stream_tasks[client] = scope
            try:
                await self._stream_tries(i, client, attached, what)
            finally:
                if self._stream_tasks.get(client) is scope:
                    del self._stream_tasks[client]
                if not started:
                    task_status.started(False)

    async def _stream_tries(self, i: int, client: StreamClient, attached: Callable[[], None],
                            what: str) -> None:
        shift = tries = 0
        try:
            while True:
                try:
                    code = await self._stream_once(i, client, attached, shift)
                except (OSError, trio_websocket.HandshakeError):
                    # A node going away or gone in a cluster's failover: the next one.
                    if len(self._urls) == 1 or tries >= _CONNECT_TRIES:
                        raise
                    tries, shift = tries + 1, shift + 1
                    await trio.sleep(_CONNECT_PAUSE)
                    continue
                except trio_websocket.ConnectionRejected as rejected:
                    # 503: the session's node does not answer (yet): as a person would, again
                    if rejected.status_code != 503 or tries >= _CONNECT_TRIES:
                        raise
                    tries += 1
                    await trio.sleep(_CONNECT_PAUSE)
                    continue
                tries = 0
                if code in _NODE_GONE:
                    if len(self._urls) == 1:
                        return  # no other node to go to
                    shift += 1
                if (code not in _REATTACH or self.finishing
                        or self.now() >= self.config.duration):
                    return
        except trio_websocket.ConnectionRejected as rejected:
            if rejected.status_code in (404, 409):  # the session is not streamable now
                self.stream_refused += 1
            else:
                self._error(f"{what}: stream refused {rejected.status_code}")
        except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed,
                msgspec.DecodeError, msgspec.ValidationError) as error:
            self._error(f"{what}: stream failed: {error!r}")

    async def _stream_once(self, i: int, client: StreamClient, attached: Callable[[], None],
                           shift: int = 0) -> int | None:
        """Attach once and read until the server closes: the close code (``None`` when this
        side closed it)."""
        async with trio_websocket.open_websocket_url(
            self._stream_url(i, client, shift), extra_headers=self._api_headers,
            disconnect_timeout=5,
        ) as ws:
            first = attach.decode_server_frame(await ws.get_message())
            if not isinstance(first, attach.Attached):
                raise msgspec.ValidationError(f"the stream opened with {first}")
            client.attached(first.client_id, first.offset)
            if client.mode == "observer":
                client.session.clients += 1
            self._streams[client] = ws
            attached()
            try:
                while True:
                    frame = attach.decode_server_frame(await ws.get_message())
                    if isinstance(frame, attach.Output):
                        client.output(frame.offset, frame.data.encode())
                    elif isinstance(frame, attach.Gap):
                        client.gap(frame.from_, frame.to)
            except trio_websocket.ConnectionClosed as closed:
                if self._streams.get(client) is not ws:
                    return None  # this side closed it
                del self._streams[client]
                self._stream_gone(client)
                return None if closed.reason is None else closed.reason.code

    async def _operator_call(self, i: int, op: OperatorRun, step: OpStep) -> None:
        """Carry out an operator's step over REST; report how the server answered.

        In a cluster the step goes to a node other than the agent's; one that cannot be
        reached (nothing was sent) passes it to the next node. One that went away in the
        middle leaves the outcome unknown until :meth:`_settle_unknown` reads it."""
        session = op.session
        assert self._apis and session is not None
        n = len(self._apis)
        for k in range(1, n + 1 if n > 1 else 2):
            api = self._apis[(self._node[i] + k) % n]  # not the agent's node, if there are two
            try:
                r = await self._op_request(api, i, op, step, session.session_id)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if k < n:
                    continue  # never reached the node: the next one may take it
                self._op_failed(i, op, step, f"failed: {error!r}")
                return
            except httpx.TransportError as error:
                if n > 1:  # the node went away under the request: did it happen?
                    await self._settle_unknown(i, op, step, session.session_id)
                else:
                    self._op_failed(i, op, step, f"failed: {error!r}")
                return
            except (httpx.HTTPError, ValueError, KeyError) as error:
                self._op_failed(i, op, step, f"failed: {error!r}")
                return
            break
        if r is None:
            return  # done
        code = _error_code(r)
        if r.status_code == 503 and code in ("unavailable", "engine_closed"):
            op.unavailable(self.now())  # not made: the session's node is away or stopping
        elif (r.status_code, code) in _REFUSALS:
            op.refused()
        else:
            self._op_failed(i, op, step, f"answered {r.status_code} {code}")

    def _op_failed(self, i: int, op: OperatorRun, step: OpStep, what: str) -> None:
        """The step's outcome is unknown, or the server answered it as it never should."""
        op.failed()
        self._error(f"operator of agent {i}: {step.value} {what}")

    async def _op_request(self, api: httpx.AsyncClient, i: int, op: OperatorRun, step: OpStep,
                          session_id: str) -> httpx.Response | None:
        """One try of the step; ``None`` when it was made (``op`` is told), else the answer."""
        base = f"/v1/sessions/{session_id}"
        if step is OpStep.ATTACH:
            r = await api.post(f"{base}/clients",
                               json={"user_email": op.user_email, "mode": "operator"})
            if r.status_code == 201:
                op.attached(r.json()["data"]["client_id"])
                return None
        elif step is OpStep.RUN:
            assert op.command is not None
            r = await api.post(f"{base}/commands",
                               json={"client_id": op.client_id, "command": op.command[0]})
            if r.status_code == 202:
                command_id = r.json()["data"]["command_id"]
                op.accepted(command_id)
                await self._await_run_command(i, command_id)
                return None
        else:
            r = await api.delete(f"{base}/clients/{op.client_id}")
            if r.status_code == 204:
                op.detached()
                return None
        return r

    async def _settle_unknown(self, i: int, op: OperatorRun, step: OpStep,
                              session_id: str) -> None:
        """The node answering a step went away mid-request: once a forwarded write can no
        longer land (the forwarding deadline), read the session on another node and take
        what it shows as the outcome. A command whose fate is unknown is not expected in the
        history: if it ran, its agent's answer put it there."""
        await trio.sleep(FORWARD_SETTLE)
        if step is OpStep.RUN:
            op.refused()
            return
        for k in range(len(self._apis)):
            try:
                r = await self._apis[(self._node[i] + k) % len(self._apis)].get(
                    f"/v1/sessions/{session_id}")
            except httpx.TransportError:
                continue
            if r.status_code != 200:
                continue
            clients = r.json()["data"]["attached_clients"]
            if step is OpStep.ATTACH:
                mine = [c["client_id"] for c in clients if c["user_email"] == op.user_email]
                if mine:
                    op.attached(mine[0])
                else:
                    op.refused()
            elif any(c["client_id"] == op.client_id for c in clients):
                op.unavailable(self.now())  # still attached: detach again
            else:
                op.detached()
            return
        self._op_failed(i, op, step, "failed: no node answered afterwards")

    async def _await_run_command(self, i: int, command_id: str) -> None:
        """Wait until the agent got run_command ``command_id`` (the agent answers it in its
        own task); it must, unless its socket closed meanwhile (the server then marks the
        command lost, or the session ended and took it along)."""
        ws = self._sockets[i]
        seen = self._commands_seen.setdefault(i, set())
        with trio.move_on_after(self.config.run_command_timeout):
            while (command_id not in seen and self._sockets[i] is ws and ws is not None
                   and not self.finishing):
                await self._agent_news.park()
        if command_id in seen:
            seen.discard(command_id)
        elif self._sockets[i] is ws and ws is not None and not self.finishing:
            self._error(f"agent {i}: no run_command for accepted command {command_id}")

    async def _hello(self, nursery: trio.Nursery, i: int, run: AgentRun, step: Step) -> None:
        plan = run.plan
        hello = wire.Hello(
            machine_id=plan.machine_id, machine_hostname=plan.machine_hostname,
            resume_token=run.resume_token if step is Step.RESUME else None,
            agent_version="tether-sim",
        )
        if self._tried[i]:  # a reconnection: to the next node
            self._node[i] = (self._node[i] + 1) % len(self._urls)
        self._tried[i] = True
        rejected: list[trio_websocket.ConnectionRejected] = []
        try:
            with trio.fail_after(self.config.hello_timeout):
                async with self._connect_limit:
                    with trio.CancelScope() as refused:
                        holder = await nursery.start(self._holder, refused, rejected)
                        ws = await trio_websocket.connect_websocket_url(
                            holder, self._ws_urls[self._node[i]], extra_headers=self._headers,
                            message_queue_size=4,
                        )
                if refused.cancelled_caught:
                    raise (rejected[0] if rejected else trio_websocket.HandshakeError(
                        "the connection failed during the handshake"))
                self._set_socket(i, ws)
                await self._send(i, hello)
                frame = wire.decode_server_frame(await ws.get_message())
        except (OSError, trio.TooSlowError, trio_websocket.HandshakeError,
                trio_websocket.ConnectionClosed, msgspec.DecodeError,
                msgspec.ValidationError) as error:
            self._set_socket(i, None)
            # A node that is down or going away: another node may take the agent. A refused
            # handshake (an HTTP 401) is the fleet's configuration: no retry helps.
            if (not isinstance(error, trio_websocket.ConnectionRejected)
                    and (len(self._urls) > 1 or run.failing_over)
                    and run.retry_connect(self.now(), step)):
                return
            run.hello_failed(self.now())
            self._error(f"agent {i}: {step.value} failed: {error!r}")
            return
        if not isinstance(frame, wire.Welcome):
            await self._close(i)
            if (step is Step.RESUME and isinstance(frame, wire.Error)
                    and frame.code == "resume_rejected"):
                run.resume_refused(self.now())  # the session ended while the agent was away
                return
            if (isinstance(frame, wire.Error) and frame.code == "unavailable"
                    and run.retry_connect(self.now(), step)):
                return  # Redis mode, Redis away for now: say it again later
            run.hello_failed(self.now())
            self._error(f"agent {i}: {step.value} refused: {frame}")
            return
        run.welcomed(self.now(), frame.session_id, frame.resume_token,
                     frame.heartbeat_interval, frame.grace_period, frame.resumed,
                     frame.output_offset)
        if run.session is not None:
            run.session.node = self._node[i]
        nursery.start_soon(self._reader, i, ws)
        if run.output_trouble is not None:
            self._error(f"agent {i}: {run.output_trouble}")
        await self._send_output(i, run)

    @staticmethod
    async def _holder(
        refused: trio.CancelScope, rejected: list[trio_websocket.ConnectionRejected],
        task_status: trio.TaskStatus[trio.Nursery],
    ) -> None:
        """A nursery for one connection's background task. A refused handshake (an HTTP 401)
        raises there: it cancels the connect (``refused``, the refusal in ``rejected``) and the
        agent sees a failed hello, not a crash."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()
        except* (trio_websocket.HandshakeError, trio_websocket.ConnectionClosed,
                 OSError) as group:
            match, _ = group.split(trio_websocket.ConnectionRejected)
            if match is not None:
                rejected.extend(e for e in match.exceptions
                                if isinstance(e, trio_websocket.ConnectionRejected))
            refused.cancel()

    async def _reader(self, i: int, ws: trio_websocket.WebSocketConnection) -> None:
        run = self.runs[i]
        try:
            while True:
                frame = wire.decode_server_frame(await ws.get_message())
                if isinstance(frame, wire.RunCommand):
                    if self._sockets[i] is ws:  # not on a socket the agent has let go of
                        run.run_command(frame.command_id, frame.command)
                        self._wake[i].set()
                        if self.operators[i] is not None:  # its operator may be waiting
                            self._commands_seen.setdefault(i, set()).add(frame.command_id)
                            self._agent_news.unpark_all()
                elif (isinstance(frame, wire.Error) and frame.code not in SERVER_ENDS
                      and frame.code not in RESUME_ASKED):
                    self._error(f"agent {i}: the server says {frame.code}: {frame.message}")
        except trio_websocket.ConnectionClosed as closed:
            if self._sockets[i] is ws and not self.finishing:
                self._set_socket(i, None)
                reason = _close_reason(closed, ws)
                if reason in SERVER_ENDS:
                    if run.ended_by_server(self.now(), reason):
                        self._recount(i)
                        self._wake[i].set()  # its reconnect is due soon
                elif _node_went_away(closed, ws):
                    if run.node_lost(self.now()):
                        self._recount(i)
                        self._wake[i].set()  # it resumes at once
                elif run.closed_by_server():
                    self._recount(i)
                    self._error(f"agent {i}: the server closed its socket ({closed.reason})")
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            self._error(f"agent {i}: undecodable frame from the server: {error}")


#: How long after a node went away under an operator's request its outcome is known: a
#: forwarded write is run by the owner only before the forwarding deadline (3 s).
FORWARD_SETTLE = 3.5

#: Answers to an operator's step that mean "not now": the session is not CONNECTED (409), or
#: it ended and took the operator's client with it (404 client_not_found).
_REFUSALS = {(409, "session_not_active"), (404, "client_not_found")}


def _close_reason(error: BaseException, ws: trio_websocket.WebSocketConnection | None
                  ) -> str | None:
    """The reason the server gave for closing the socket, if it gave one."""
    reason = getattr(_close_of(error, ws), "reason", None)
    return reason if isinstance(reason, str) else None


#: Close codes that say the node went away, not that it ended the session or refused the
#: agent: going away (1001), no close frame at all (1006: killed, connection reset), an
#: internal error (1011), restarting (1012: draining), try again later (1013).
#: A stream that cannot connect (its node going away, or the session's owner not answering)
#: tries again this many times, this far apart, before it counts as an error.
_CONNECT_TRIES = 20
_CONNECT_PAUSE = 0.25
_NODE_GONE = frozenset({1001, 1006, 1011, 1012, 1013})


#: Stream closes after which its client re-attaches at once from its offset.
_REATTACH = _NODE_GONE | {4008}


def _node_went_away(error: BaseException, ws: trio_websocket.WebSocketConnection | None
                    ) -> bool:
    """Whether a close means the agent's node went away (it should resume elsewhere)."""
    if isinstance(error, trio.BrokenResourceError):
        return True  # the socket broke under a send: no close frame
    return getattr(_close_of(error, ws), "code", 1006) in _NODE_GONE


def _close_of(error: BaseException, ws: trio_websocket.WebSocketConnection | None) -> object:
    """The close (code and reason) a closed-socket error carries, else the socket's own."""
    closed = getattr(error, "reason", None)
    if closed is None and ws is not None:
        closed = ws.closed
    return closed


def _error_code(r: httpx.Response) -> str | None:
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
