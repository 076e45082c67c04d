"""A lean HTTP/1.1 client for webhook delivery: h11 over trio streams, keep-alive per endpoint.

Why not httpx here: on the delivery benchmark (``benchmarks/webhooks.py``, 2 shared cores)
httpx/httpcore cost ~0.5-0.7 ms of CPU per request, most of it httpcore's connection pool
(every request scans each pooled connection's ``is_idle``/``has_expired``, and the cost grows
with the connections per pool), which held delivery at ~1,365 deliveries/s against a target of
2,000. Delivery needs one thing: POST a small body to one origin, over a few reused
connections, within a deadline, and read the status. This client does only that, with h11
(the HTTP/1.1 state machine hypercorn already uses) and trio's streams: on the same benchmark
and machine it delivers 3,000-4,000/s (httpx, run alternately with it: 900-1,150/s), and 8 or
16 connections per endpoint cost no more than 4 (``benchmarks/README.md``, ``## webhooks``).
httpx stays in use elsewhere.

What it does, and does not:

- one :class:`DeliveryClient` per endpoint keeps up to ``max_connections`` idle keep-alive
  connections (in flight, an endpoint has at most its workers' attempts, which is the same
  bound, plus any ``webhook.test`` sends); idle ones do not expire by time but are checked
  when next used; a connection that errors, that is cut short, whose response says
  ``Connection: close`` or that h11 does not consider reusable is closed, never reused;
- an idle connection the server has meanwhile closed is noticed before reuse (its socket is
  readable), and a reused connection that fails before any byte of the response arrived is
  retried once on a fresh connection (the receiver de-duplicates by ``webhook-id``);
- each attempt, connect + TLS handshake + send + response, is bounded by ``timeout``;
- the response body is read and discarded up to ``max_response_bytes``; past that the
  connection is closed instead of reused. Once the status line arrived, the status is the
  answer even if the rest of the body then fails or times out;
- redirects are never followed: a 3xx is returned like any other status;
- ``addresses`` (checked by :class:`~._urls.AddressGuard`) are what it connects to, with the
  URL's host as ``Host`` and TLS server name, so DNS can not swap the address in between.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, Self, TypeAlias
from urllib.parse import quote, unquote, urlsplit

import h11
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

USER_AGENT = "tether-webhooks/0.1"

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: Every visible ASCII character is valid in an HTTP/1.1 request target: encode the rest.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


class PostClient(Protocol):
    """What delivery needs of an HTTP client: :class:`DeliveryClient`, or a stand-in.

    ``post`` returns the response's status code or raises an :class:`HTTPError` subclass
    (:class:`Timeout` once the attempt's budget ran out). A stand-in receiver (tests, the
    fault simulation in :mod:`tether.sim.faults`) keeps the same contract, timeout included.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   addresses: tuple[str, ...] = ()) -> int: ...


#: Makes an endpoint's client, given how many keep-alive connections it may hold.
ClientFactory: TypeAlias = Callable[[int], PostClient]


class HTTPError(Exception):
    """An attempt that got no status from the receiver."""


class ConnectError(HTTPError):
    """The connection (or its TLS handshake) could not be made."""


class WriteError(HTTPError):
    """The request could not be sent."""


class ReadError(HTTPError):
    """The connection failed while the response was awaited."""


class RemoteProtocolError(HTTPError):
    """The receiver closed the connection early or answered with something not HTTP/1.1."""


class InvalidRequest(HTTPError):
    """The URL or a header can not make an HTTP/1.1 request."""


class Timeout(HTTPError):
    """The attempt's deadline passed before the status line arrived."""


class _Stale(Exception):
    """A reused connection failed before any byte of the response: retry on a fresh one."""


class Target:
    """A URL, split once into what a request needs."""

    __slots__ = ("authorization", "host", "host_header", "origin", "path", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        host = parts.hostname
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        self.host = host
        default = 443 if self.tls else 80
        self.port = parts.port if parts.port is not None else default
        authority = f"[{host}]" if ":" in host else host
        if self.port != default:
            authority += f":{self.port}"
        self.host_header = authority.encode("ascii")
        self.origin = (parts.scheme, host, self.port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.path = quote(path, safe=_TARGET_SAFE).encode("ascii")
        self.authorization: bytes | None = None
        if parts.username is not None:  # as httpx did: userinfo becomes Basic credentials
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))


class _Connection:
    __slots__ = ("conn", "key", "socket", "stream")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType,
                 key: tuple[object, ...]) -> None:
        self.stream = stream
        self.socket = socket
        self.conn = h11.Connection(h11.CLIENT)
        self.key = key


class _Attempt:
    __slots__ = ("eof", "phase", "received", "status")

    def __init__(self) -> None:
        self.phase = "connecting"
        self.eof = False
        self.status: int | None = None
        self.received = False  # any byte of the response on the current connection


class DeliveryClient:
    """POSTs to http(s) URLs over a small pool of keep-alive connections (see the module)."""

    def __init__(self, *, timeout: float, max_connections: int, max_response_bytes: int,
                 tls: ssl.SSLContext | None = None, user_agent: str = USER_AGENT) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._tls = tls
        self._user_agent = user_agent.encode("ascii")
        self._idle: list[_Connection] = []  # most recently used last
        self._targets: dict[str, Target] = {}
        self._closed = False

    async def __aenter__(self) -> DeliveryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every idle connection; the client takes no more requests."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await trio.aclose_forcefully(connection.stream)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 64:
                self._targets.clear()
            target = self._targets[url] = Target(url)
        return target

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   addresses: tuple[str, ...] = ()) -> int:
        """POST ``body`` to ``url`` once and return the response's status code.

        ``headers`` go with ``Host``, ``User-Agent`` and ``Content-Length``, which are set
        here. Connects to one of ``addresses`` if any are given, else to the URL's host.
        Raises :class:`HTTPError` (a subclass) if no status line arrived.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        try:
            target = self.target(url)
            fields: list[tuple[bytes, bytes]] = [
                (b"host", target.host_header),
                (b"user-agent", self._user_agent),
                (b"content-length", b"%d" % len(body)),
            ]
            if target.authorization is not None:
                fields.append((b"authorization", target.authorization))
            fields.extend((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items())
            request = h11.Request(method=b"POST", target=target.path, headers=fields)
        except (ValueError, h11.LocalProtocolError) as exc:
            raise InvalidRequest(str(exc)) from exc
        attempt = _Attempt()
        with trio.move_on_after(self.timeout) as deadline:
            try:
                await self._exchange(attempt, target, addresses, request, body)
            except HTTPError:
                if attempt.status is None:
                    raise
        if attempt.status is not None:  # the receiver answered: the rest is its business
            return attempt.status
        assert deadline.cancelled_caught
        raise Timeout(f"timeout after {self.timeout:g} s {attempt.phase}")

    # -- connections -------------------------------------------------------------------------

    async def _exchange(self, attempt: _Attempt, target: Target, addresses: tuple[str, ...],
                        request: h11.Request, body: bytes) -> None:
        key = (target.origin, addresses)
        connection = await self._take_idle(key)
        if connection is not None:
            try:
                await self._roundtrip(connection, attempt, request, body, reused=True)
                return
            except _Stale:
                attempt.received = attempt.eof = False
        attempt.phase = "connecting"
        connection = await self._connect(target, addresses, key)
        await self._roundtrip(connection, attempt, request, body, reused=False)

    async def _take_idle(self, key: tuple[object, ...]) -> _Connection | None:
        idle = self._idle
        found: _Connection | None = None
        stale: list[_Connection] = []
        for i in range(len(idle) - 1, -1, -1):  # no await in here: others share the list
            connection = idle[i]
            if connection.key != key:
                continue
            del idle[i]
            # Readable while idle: the server closed it (or sent what it should not have).
            if connection.socket.is_readable():
                stale.append(connection)
                continue
            found = connection
            break
        for connection in stale:
            await trio.aclose_forcefully(connection.stream)
        return found

    async def _release(self, connection: _Connection) -> None:
        idle = self._idle
        if self._closed:
            await trio.aclose_forcefully(connection.stream)
            return
        idle.append(connection)
        if len(idle) > self.max_connections:
            oldest = idle.pop(0)  # before any await: concurrent releases see the trimmed list
            await trio.aclose_forcefully(oldest.stream)

    async def _connect(self, target: Target, addresses: tuple[str, ...],
                       key: tuple[object, ...]) -> _Connection:
        error: OSError | None = None
        for host in addresses or (target.host,):
            try:
                tcp = await trio.open_tcp_stream(host, target.port)
                break
            except OSError as exc:
                error = exc
        else:
            reason: BaseException | None = error
            while isinstance(reason, OSError) and isinstance(reason.__cause__, BaseExceptionGroup):
                reason = reason.__cause__.exceptions[-1]  # trio's "all attempts failed": why
            where = f"{target.host}:{target.port}"
            raise ConnectError(f"cannot connect to {where}: {reason}") from error
        stream: trio.abc.Stream = tcp
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = trio.SSLStream(tcp, self._tls, server_hostname=target.host,
                                 https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException as exc:
                await trio.aclose_forcefully(tcp)
                if isinstance(exc, _STREAM_ERRORS):
                    reason = exc.__cause__ or exc
                    raise ConnectError(f"TLS handshake with {target.host} failed: {reason}"
                                       ) from exc
                raise
            stream = tls
        return _Connection(stream, tcp.socket, key)

    # -- one request on one connection -------------------------------------------------------

    async def _roundtrip(self, connection: _Connection, attempt: _Attempt,
                         request: h11.Request, body: bytes, *, reused: bool) -> None:
        """Send ``request`` and read its response; the connection goes back to the pool only
        if all went well and it may be reused, and is closed otherwise (also on cancel)."""
        keep = False
        try:
            conn = connection.conn
            attempt.phase = "sending the request"
            data = conn.send(request) or b""
            data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            try:
                await connection.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                if reused:
                    raise _Stale from exc
                raise WriteError(f"sending the request failed: {exc}") from exc
            attempt.phase = "waiting for the response"
            while True:
                event = await self._next_event(connection, attempt, reused)
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    if reused and not attempt.received:
                        raise _Stale
                    raise RemoteProtocolError(
                        "the server closed the connection without a response")
                # an InformationalResponse (1xx): the real one follows
            attempt.status = event.status_code
            attempt.phase = "reading the response body"
            read = 0
            limit = self.max_response_bytes
            while True:
                event = await self._next_event(connection, attempt, reused=False)
                if type(event) is h11.Data:
                    read += len(event.data)
                    if read >= limit:
                        return  # enough of it: close rather than read the rest
                elif type(event) is h11.EndOfMessage:
                    break
                elif type(event) is h11.ConnectionClosed:
                    return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()  # h11 refuses (MUST_CLOSE) after Connection: close
                keep = True
        finally:
            if keep:
                await self._release(connection)
            else:
                await trio.aclose_forcefully(connection.stream)

    @staticmethod
    async def _next_event(connection: _Connection, attempt: _Attempt, reused: bool) -> object:
        conn = connection.conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if reused and not attempt.received:
                    raise _Stale from exc
                if attempt.eof:
                    raise RemoteProtocolError(
                        f"the server closed the connection ({attempt.phase})") from exc
                raise RemoteProtocolError(f"{exc} ({attempt.phase})") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await connection.stream.receive_some(65536)
            except _STREAM_ERRORS as exc:
                if reused and not attempt.received:
                    raise _Stale from exc
                raise ReadError(f"{attempt.phase} failed: {exc}") from exc
            if data:
                attempt.received = True
            else:
                attempt.eof = True
            # b"": the server closed its side
            conn.receive_data(data if isinstance(data, bytes) else bytes(data))
