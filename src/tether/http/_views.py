"""The REST views: parse the request into typed values, call the engine, encode the answer.

No lifecycle logic lives here. Every view authenticates with an API key, is scoped to that key's
workspace, and answers ``{"data": ...}`` (or a page with ``meta``); errors are raised and
rendered by :mod:`tether.http._errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, request

from ._errors import Unauthorized
from ._models import AttachClientBody, CreateSessionBody, Data, Health, RunCommandBody
from ._params import ListQuery, decode_body, history_query, list_query

if TYPE_CHECKING:
    from tether.engine import Engine

    from ._auth import KeyStore

_JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_create_body = msgspec.json.Decoder(CreateSessionBody)
_attach_body = msgspec.json.Decoder(AttachClientBody)
_command_body = msgspec.json.Decoder(RunCommandBody)


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status=status, content_type=_JSON)


class SessionsApi:
    """The Sessions API over one engine. Method names are the operations' ids."""

    def __init__(self, engine: Engine, keys: KeyStore, openapi: bytes) -> None:
        self.engine = engine
        self.keys = keys
        self._openapi = openapi
        self._list_queries: dict[bytes, ListQuery] = {}

    def _workspace(self) -> str:
        workspace_id = self.keys.workspace("api", request.headers.get("Authorization"))
        if workspace_id is None:
            raise Unauthorized()
        return workspace_id

    # -- reads (the seed) ------------------------------------------------------------------

    async def list_sessions(self) -> Response:
        workspace_id = self._workspace()
        # Parsing is a pure function of the query string: remember the few that clients repeat.
        raw = request.query_string
        q = self._list_queries.get(raw)
        if q is None:
            q = list_query(request.args)
            if len(self._list_queries) >= 1024:
                self._list_queries.clear()
            self._list_queries[raw] = q
        page = self.engine.list_sessions(
            workspace_id, status=q.status, machine_id=q.machine_id,
            machine_hostname=q.machine_hostname, limit=q.limit, offset=q.offset,
        )
        return _json(page)

    async def get_session(self, session_id: str) -> Response:
        return _json(Data(data=self.engine.get_session(self._workspace(), session_id)))

    async def get_machine_session(self, machine_id: str) -> Response:
        return _json(Data(data=self.engine.machine_session(self._workspace(), machine_id)))

    async def get_session_history(self, session_id: str) -> Response:
        workspace_id = self._workspace()
        q = history_query(request.args)
        return _json(self.engine.history(workspace_id, session_id, limit=q.limit,
                                         before=q.before))

    async def get_session_metrics(self, session_id: str) -> Response:
        return _json(Data(data=self.engine.metrics(self._workspace(), session_id)))

    # -- writes ----------------------------------------------------------------------------

    async def create_session(self) -> Response:
        workspace_id = self._workspace()
        body = decode_body(_create_body, await request.get_data(as_text=False))
        detail = await self.engine.create_session(
            workspace_id, body.machine_id, body.machine_hostname
        )
        return _json(Data(data=detail), 201)

    async def terminate_session(self, session_id: str) -> Response:
        detail = await self.engine.terminate(self._workspace(), session_id)
        return _json(Data(data=detail))

    async def attach_client(self, session_id: str) -> Response:
        workspace_id = self._workspace()
        body = decode_body(_attach_body, await request.get_data(as_text=False))
        client = await self.engine.attach_client(
            workspace_id, session_id, body.user_email, body.mode
        )
        return _json(Data(data=client), 201)

    async def detach_client(self, session_id: str, client_id: str) -> Response:
        await self.engine.detach_client(self._workspace(), session_id, client_id)
        return Response(b"", status=204)

    async def run_command(self, session_id: str) -> Response:
        workspace_id = self._workspace()
        body = decode_body(_command_body, await request.get_data(as_text=False))
        view = await self.engine.run_command(workspace_id, session_id, body.client_id,
                                             body.command)
        return _json(Data(data=view), 202)

    async def get_command(self, session_id: str, command_id: str) -> Response:
        return _json(Data(data=self.engine.get_command(self._workspace(), session_id,
                                                       command_id)))

    # -- service ---------------------------------------------------------------------------

    async def openapi(self) -> Response:
        return Response(self._openapi, content_type=_JSON)

    async def healthz(self) -> Response:
        return _json(Health(status="ok", live_sessions=self.engine.live_sessions))
