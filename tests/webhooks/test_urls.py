"""Target URLs: http(s) only, and no internal addresses unless private targets are allowed."""

from __future__ import annotations

import base64
import ipaddress
import re

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.engine import InvalidParameter
from tether.http._models import MAX_WEBHOOK_URL, WEBHOOK_SECRET, WEBHOOK_URL
from tether.webhooks import check_url, secret_key
from tether.webhooks._urls import AddressGuard, parse_url

from .conftest import WS


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10:8080/hook", "loopback"),
    ("http://localhost:9000/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fd00::1]/hook", "private"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://100.64.0.1/hook", "internal"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
])
async def test_internal_addresses_are_refused(url, reason):
    with pytest.raises(InvalidParameter) as caught:
        await check_url(url, allow_private=False)
    assert caught.value.parameter == "url"
    assert reason in caught.value.reason
    assert await check_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "file:///etc/passwd", "gopher://x", "//example.com", "",
    "http://", "http://exa mple.com/", "http://example.com:99999/", 42, None, "x" * 3000,
])
async def test_malformed_urls_are_refused(url):
    with pytest.raises(InvalidParameter):
        await check_url(url, allow_private=True)


async def test_public_addresses_are_accepted():
    for url in ("http://93.184.215.14/hook", "https://[2606:4700::1111]:8443/hook"):
        assert await check_url(url, allow_private=False) == url


async def test_the_service_refuses_internal_targets(clock, engine, hooks_factory):
    hooks = await hooks_factory(allow_private=False)
    with pytest.raises(InvalidParameter):
        await hooks.create(WS, "http://127.0.0.1:8080/hook", ["*"])
    hook = await hooks.create(WS, "https://93.184.215.14/hook", ["*"])
    with pytest.raises(InvalidParameter):
        await hooks.update(WS, hook.id, url="http://169.254.169.254/")
    assert (await hooks.get(WS, hook.id)).url == "https://93.184.215.14/hook"
    with pytest.raises(InvalidParameter) as caught:
        await hooks.create(WS, "https://93.184.215.14/hook", ["session.exploded"])
    assert caught.value.parameter == "events"


async def test_hosts_are_checked_again_before_sending(clock):
    guard = AddressGuard(allow_private=False, ttl=60.0)
    assert "loopback" in await guard.refusal("http://127.0.0.1:1/hook")
    assert await guard.refusal("http://93.184.215.14/hook") is None
    assert await AddressGuard(True, 60.0).refusal("http://127.0.0.1:1/") is None
    await trio.sleep(61)
    assert "loopback" in await guard.refusal("http://127.0.0.1:1/hook")


async def test_the_guard_hands_out_the_addresses_it_checked(clock, monkeypatch):
    from tether.webhooks import _urls

    answers = {"hooks.example": ["93.184.215.14", "2606:4700::1111"]}

    async def fake_resolve(host, port):
        return [ipaddress.ip_address(a) for a in answers[host]]

    monkeypatch.setattr(_urls, "resolve", fake_resolve)
    guard = AddressGuard(allow_private=False, ttl=60.0)
    url = "https://hooks.example/hook"
    assert await guard.check(url) == (None, ("93.184.215.14", "2606:4700::1111"))
    # DNS rebinding: the name now answers an internal address. Within the TTL the request
    # still goes to the checked addresses (never to the new answer); after it, it is refused.
    answers["hooks.example"] = ["127.0.0.1"]
    assert await guard.check(url) == (None, ("93.184.215.14", "2606:4700::1111"))
    await trio.sleep(61)
    refusal, addresses = await guard.check(url)
    assert "loopback" in refusal and addresses == ()
    assert await AddressGuard(True, 60.0).check(url) == (None, ())  # connect by name


# -- the HTTP API's patterns (tether.http._models) against the service's checks ------------------
# The API documents (and its decoder enforces) a pattern for webhook URLs and secrets; every
# value a client may send by the document must pass the service's own checks, or a schema-valid
# request would be refused.


@settings(max_examples=2000, database=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(WEBHOOK_URL, fullmatch=True).filter(lambda u: len(u) <= MAX_WEBHOOK_URL))
def test_every_url_the_api_documents_is_one_the_service_takes(url):
    parse_url(url)


@pytest.mark.parametrize("url", [
    "http://x.example/", "https://user:pw@hooks.example:8443/p?q=1#f", "HTTP://H.EXAMPLE",
    "http://[::1]:9000/hook", "http://[2606:4700::1111]/", "http://[::ffff:10.0.0.1]/hook",
    "http://127.0.0.1:9/hook", "http://h:00080/",
])
def test_the_url_pattern_takes_ordinary_urls(url):
    assert re.search(WEBHOOK_URL, url)
    parse_url(url)


@pytest.mark.parametrize("url", [
    "ftp://x.example/", "http://", "http:///x", "http://h:65536/", "http://h:/", "http://a b/",
    "http://[:::]/", "http://[::ffff:01.2.3.4]/", "http://caf\u00e9.example/", "//x.example/",
])
def test_the_url_pattern_refuses_what_is_not_an_http_url(url):
    assert not re.search(WEBHOOK_URL, url)


@settings(max_examples=500, database=None)
@given(st.binary(max_size=70))
def test_the_secret_pattern_is_exactly_the_secrets_the_service_takes(key):
    secret = "whsec_" + base64.b64encode(key).decode()
    try:
        secret_key(secret)
        taken = True
    except InvalidParameter:
        taken = False
    assert bool(re.search(WEBHOOK_SECRET, secret)) is taken


@settings(max_examples=500, database=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(WEBHOOK_SECRET, fullmatch=True))
def test_every_secret_the_api_documents_is_one_the_service_takes(secret):
    secret_key(secret)
