"""The Sessions API's views (and the service's): typed values in, the engine's answer out.

No lifecycle logic lives here, and no HTTP either: :mod:`._endpoints` authenticates, parses and
encodes, from the route table; each method is one operation (its name is the operationId) and
returns what the route table says it answers. Errors are raised and rendered by
:mod:`._errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from quart import Response

from tether.engine import CommandNotFound, InvalidParameter

from ._models import Data, Health

if TYPE_CHECKING:
    from tether.engine import (
        AttachedClient,
        CommandView,
        Engine,
        HistoryPage,
        MachineSession,
        Metrics,
        OutputPage,
        SessionDetail,
        SessionPage,
    )

    from ._models import AttachClientBody, CreateSessionBody, RunCommandBody


class SessionsApi:
    """The Sessions API over one engine, and the service's own operations."""

    def __init__(self, engine: Engine, openapi: bytes, node_id: str = "") -> None:
        self.engine = engine
        self._openapi = openapi
        self.node_id = node_id

    # -- reads (the seed) ------------------------------------------------------------------

    async def list_sessions(
        self, workspace_id: str, status: str | None, machine_id: str | None,
        machine_hostname: str | None, limit: int, offset: int,
    ) -> SessionPage:
        return self.engine.list_sessions(
            workspace_id, status=status, machine_id=machine_id,
            machine_hostname=machine_hostname, limit=limit, offset=offset,
        )

    async def get_session(self, workspace_id: str, session_id: str) -> Data[SessionDetail]:
        return Data(data=self.engine.get_session(workspace_id, session_id))

    async def get_machine_session(
        self, workspace_id: str, machine_id: str
    ) -> Data[MachineSession]:
        return Data(data=self.engine.machine_session(workspace_id, machine_id))

    async def get_session_history(
        self, workspace_id: str, session_id: str, limit: int, before: str | None
    ) -> HistoryPage:
        """A ``before`` cursor naming no command of the session is that command not found
        (404), like any other id that names nothing: it is well formed, so not a 400."""
        try:
            return self.engine.history(workspace_id, session_id, limit=limit, before=before)
        except InvalidParameter as error:
            if before is None or error.parameter != "before":
                raise
            raise CommandNotFound(before) from None

    async def get_session_metrics(self, workspace_id: str, session_id: str) -> Data[Metrics]:
        return Data(data=self.engine.metrics(workspace_id, session_id))

    async def get_session_output(self, workspace_id: str, session_id: str, offset: int | None,
                                 limit: int) -> Data[OutputPage]:
        return Data(data=await self.engine.read_output(workspace_id, session_id, offset=offset,
                                                       limit=limit))

    # -- writes ----------------------------------------------------------------------------

    async def create_session(
        self, workspace_id: str, body: CreateSessionBody
    ) -> Data[SessionDetail]:
        detail = await self.engine.create_session(
            workspace_id, body.machine_id, body.machine_hostname
        )
        return Data(data=detail)

    async def terminate_session(self, workspace_id: str, session_id: str) -> Data[SessionDetail]:
        return Data(data=await self.engine.terminate(workspace_id, session_id))

    async def attach_client(
        self, workspace_id: str, session_id: str, body: AttachClientBody
    ) -> Data[AttachedClient]:
        client = await self.engine.attach_client(
            workspace_id, session_id, body.user_email, body.mode
        )
        return Data(data=client)

    async def detach_client(self, workspace_id: str, session_id: str, client_id: str) -> None:
        await self.engine.detach_client(workspace_id, session_id, client_id)

    async def run_command(
        self, workspace_id: str, session_id: str, body: RunCommandBody
    ) -> Data[CommandView]:
        view = await self.engine.run_command(workspace_id, session_id, body.client_id,
                                             body.command)
        return Data(data=view)

    async def get_command(
        self, workspace_id: str, session_id: str, command_id: str
    ) -> Data[CommandView]:
        return Data(data=self.engine.get_command(workspace_id, session_id, command_id))

    # -- service ---------------------------------------------------------------------------

    async def openapi(self) -> Response:
        return Response(self._openapi, content_type="application/json")

    async def healthz(self) -> Health:
        engine = self.engine
        nodes = engine.cluster_nodes
        role: Literal["standalone", "member", "draining"] = (
            "draining" if engine.draining else "standalone" if nodes is None else "member")
        outage = engine.store_outage
        reason = None
        if outage is not None:
            seconds, error = outage
            reason = f"Redis has not answered for {seconds:.0f} s: {error}"
        return Health(status="ok" if reason is None else "degraded",
                      live_sessions=engine.live_sessions, reason=reason,
                      node_id=self.node_id or None, role=role, nodes=nodes)
