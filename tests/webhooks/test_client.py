"""The delivery HTTP client (h11 over trio streams) against scripted raw servers on 127.0.0.1.

Each server answers its requests, in arrival order and across connections, with scripted raw
bytes, then keeps the connection, closes it or hangs; it records connections and requests.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass, field

import pytest
import trio

from tether.webhooks._client import (
    ConnectError,
    DeliveryClient,
    InvalidRequest,
    RemoteProtocolError,
    Target,
    Timeout,
)

from .conftest import dead_url

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
HEADERS = {"Content-Type": "application/json", "webhook-id": "evt_1"}


def response(status: int = 200, body: bytes = b"", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class RawServer:
    #: (bytes to send, then "keep" | "close" | "hang") per request; 200 + keep when run out.
    replies: list[tuple[bytes, str]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners: list = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.tls is not None:
            listeners = [trio.SSLListener(listener, self.tls, https_compatible=True)
                         for listener in listeners]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        connection = self.connections
        buffer = b""

        async def more() -> bool:
            nonlocal buffer
            data = await stream.receive_some(65536)
            buffer += data
            return bool(data)

        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not await more():
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    if not await more():
                        return
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append(Request(lines[0], headers, body, connection))
                data, then = self.replies.pop(0) if self.replies else (OK, "keep")
                if data:
                    await stream.send_all(data)
                if then == "close":
                    return
                if then == "hang":
                    await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture
def server_factory(nursery):
    async def make(*replies: tuple[bytes, str], tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(list(replies), tls)
        await nursery.start(server.serve)
        return server

    return make


def new_client(**overrides: object) -> DeliveryClient:
    settings: dict = {"timeout": 10.0, "max_connections": 4, "max_response_bytes": 64 * 1024}
    settings.update(overrides)
    return DeliveryClient(**settings)


async def test_requests_carry_the_headers_and_reuse_one_kept_alive_connection(server_factory):
    server = await server_factory()
    async with new_client() as client:
        for i in range(5):
            status = await client.post(server.url("/hook?x=1"), b'{"n": %d}' % i, HEADERS)
            assert status == 200
        assert client.idle_connections == 1
    assert server.connections == 1
    assert [r.connection for r in server.requests] == [1] * 5
    first = server.requests[0]
    assert first.line == "POST /hook?x=1 HTTP/1.1"
    assert first.body == b'{"n": 0}'
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["user-agent"] == "tether-webhooks/0.1"
    assert first.headers["content-length"] == "8"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["webhook-id"] == "evt_1"


async def test_concurrent_requests_keep_at_most_max_connections_idle(server_factory):
    server = await server_factory()
    async with new_client(max_connections=2) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(client.post, server.url(), b"{}", HEADERS)
        assert client.idle_connections <= 2
        before = server.connections
        for _ in range(4):
            assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert server.connections == before  # the kept ones served these
    assert len(server.requests) == 10


async def test_connection_close_is_honoured(server_factory):
    server = await server_factory((response(200, b"ok", "Connection: close"), "keep"))
    async with new_client() as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 0
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 1
    assert [r.connection for r in server.requests] == [1, 2]


async def test_a_server_closing_mid_response_is_not_reused(server_factory):
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
    server = await server_factory((cut, "close"), (b"HTTP/1.1 500 Oops\r\nConte", "close"))
    async with new_client() as client:
        # The status line arrived: it is the answer, though the body was cut short.
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 0
        with pytest.raises(RemoteProtocolError):  # cut inside the head: no status at all
            await client.post(server.url(), b"{}", HEADERS)
        assert await client.post(server.url(), b"{}", HEADERS) == 200
    assert [r.connection for r in server.requests] == [1, 2, 3]


async def test_a_server_closing_without_a_response_is_an_error(server_factory):
    server = await server_factory((b"", "close"))
    async with new_client() as client:
        with pytest.raises(RemoteProtocolError, match="the server closed the connection"):
            await client.post(server.url(), b"{}", HEADERS)


async def test_an_idle_connection_the_server_closed_is_replaced(server_factory):
    # The server closes each connection right after its (keep-alive) response.
    server = await server_factory((OK, "close"), (OK, "close"), (OK, "close"))
    async with new_client() as client:
        for _ in range(3):
            assert await client.post(server.url(), b"{}", HEADERS) == 200
            await trio.sleep(0.05)  # let the close arrive
    assert [r.connection for r in server.requests] == [1, 2, 3]  # each request sent once


async def test_a_reused_connection_dropped_before_any_response_is_retried_once_afresh(
        server_factory):
    # Closed by the server as the request arrived (a keep-alive race): sent again on a new
    # connection; the receiver de-duplicates by webhook-id.
    server = await server_factory((OK, "keep"), (b"", "close"))
    async with new_client() as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert [r.connection for r in server.requests] == [1, 1, 2]
        # A fresh connection that fails is not retried: the attempt fails.
        server.replies = [(b"", "close")]
        await trio.sleep(0.05)
        for kept in client._idle:  # close the kept connection: force a fresh one
            await trio.aclose_forcefully(kept.stream)
        client._idle.clear()
        with pytest.raises(RemoteProtocolError):
            await client.post(server.url(), b"{}", HEADERS)
    assert [r.connection for r in server.requests] == [1, 1, 2, 3]


async def test_a_hanging_server_hits_the_timeout(clock, server_factory):
    server = await server_factory((b"", "hang"))
    async with new_client(timeout=7.5) as client:
        start = trio.current_time()
        with pytest.raises(Timeout, match=r"timeout after 7.5 s waiting for the response"):
            await client.post(server.url(), b"{}", HEADERS)
        assert trio.current_time() - start == 7.5
        assert client.idle_connections == 0
        assert await client.post(server.url(), b"{}", HEADERS) == 200
    assert [r.connection for r in server.requests] == [1, 2]


async def test_a_status_that_arrived_before_a_hanging_body_is_the_answer(clock, server_factory):
    slow = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    hang = b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nab"
    server = await server_factory((slow, "keep"), (hang, "hang"))
    async with new_client(timeout=5.0) as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 204
        start = trio.current_time()
        assert await client.post(server.url(), b"{}", HEADERS) == 202
        assert trio.current_time() - start == 5.0
        assert client.idle_connections == 0


async def test_redirects_are_not_followed(server_factory):
    elsewhere = await server_factory()
    redirect = response(302, b"", f"Location: {elsewhere.url()}")
    server = await server_factory((redirect, "keep"))
    async with new_client() as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 302
        assert client.idle_connections == 1  # a complete response: the connection is fine
    assert elsewhere.requests == [] and len(server.requests) == 1


async def test_an_oversized_body_is_read_up_to_the_limit_then_the_connection_closed(
        server_factory):
    big = response(200, b"x" * 300_000)
    small = response(200, b"y" * 1000)
    server = await server_factory((big, "keep"), (small, "keep"))
    async with new_client(max_response_bytes=4096) as client:
        with trio.fail_after(5):
            assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 0  # not drained: closed
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 1  # under the limit: kept
        assert await client.post(server.url(), b"{}", HEADERS) == 200
    assert [r.connection for r in server.requests] == [1, 2, 2]


async def test_chunked_responses_are_read_and_the_connection_reused(server_factory):
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    server = await server_factory((chunked, "keep"), (chunked, "keep"))
    async with new_client() as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 201
        assert await client.post(server.url(), b"{}", HEADERS) == 201
        assert await client.post(server.url(), b"{}", HEADERS) == 200
        assert client.idle_connections == 1
    assert [r.connection for r in server.requests] == [1, 1, 1]


async def test_an_interim_response_is_skipped(server_factory):
    server = await server_factory((b"HTTP/1.1 100 Continue\r\n\r\n" + response(200), "keep"))
    async with new_client() as client:
        assert await client.post(server.url(), b"{}", HEADERS) == 200


async def test_a_request_h11_can_not_make_is_an_error_of_its_own():
    async with new_client() as client:
        with pytest.raises(InvalidRequest):
            await client.post("http://127.0.0.1:1/", b"{}", {"x-bad": "line\r\nbreak"})
        with pytest.raises(InvalidRequest):
            await client.post("ftp://127.0.0.1/", b"{}", HEADERS)


async def test_a_dead_port_is_a_connect_error():
    async with new_client() as client:
        with pytest.raises(ConnectError, match="cannot connect"):
            await client.post(dead_url(), b"{}", HEADERS)


async def test_it_connects_to_the_approved_address_with_the_urls_host(server_factory):
    server = await server_factory()
    url = server.url(host="hooks.example.invalid")  # would not resolve
    async with new_client() as client:
        assert await client.post(url, b"{}", HEADERS, ("127.0.0.1",)) == 200
        # a connection to other addresses is not reused for these
        assert await client.post(url, b"{}", HEADERS, ("127.0.0.2", "127.0.0.1")) == 200
    assert server.requests[0].headers["host"] == f"hooks.example.invalid:{server.port}"
    assert server.connections == 2


def test_targets_are_split_once_into_what_a_request_needs():
    t = Target("https://" + "user:p%40ss" + "@" + "example.com/a/b?x=1&y=%C3%A9#frag")
    assert (t.tls, t.host, t.port, t.host_header) == (True, "example.com", 443, b"example.com")
    assert t.path == b"/a/b?x=1&y=%C3%A9"
    assert t.authorization == b"Basic dXNlcjpwQHNz"
    t = Target("http://[::1]:8080")
    assert (t.host, t.port, t.host_header, t.path) == ("::1", 8080, b"[::1]:8080", b"/")
    assert Target("http://bücher.example/ü").host_header == b"xn--bcher-kva.example"
    assert Target("http://bücher.example/ü").path == b"/%C3%BC"
    with pytest.raises(ValueError):
        Target("ftp://example.com/")


# -- TLS --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=hooks.test",
         "-addext", "subjectAltName=DNS:hooks.test"],
        check=True, capture_output=True)
    return cert, key


async def test_https_verifies_the_urls_host_while_connecting_to_the_approved_address(
        server_factory, certificate):
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await server_factory(tls=server_context)
    trusted = ssl.create_default_context(cafile=cert)
    async with new_client(tls=trusted) as client:
        url = server.url(host="hooks.test")
        for _ in range(3):
            assert await client.post(url, b"{}", HEADERS, ("127.0.0.1",)) == 200
        # The certificate names hooks.test: another name on the same address is refused.
        with pytest.raises(ConnectError, match="TLS handshake"):
            await client.post(server.url(host="other.test"), b"{}", HEADERS, ("127.0.0.1",))
    async with new_client() as client:  # the system's trust store does not know it
        with pytest.raises(ConnectError, match="TLS handshake"):
            await client.post(url, b"{}", HEADERS, ("127.0.0.1",))
    assert [r.connection for r in server.requests] == [1, 1, 1]
    assert server.requests[0].headers["host"] == f"hooks.test:{server.port}"
