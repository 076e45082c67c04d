"""Signatures on real deliveries, verified with the ``standardwebhooks`` library (an
independent implementation) and with a hand-written HMAC check."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tether.engine import InvalidParameter
from tether.webhooks import generate_secret, secret_key, signature_headers

from .conftest import WS


def test_generated_secrets_follow_the_standard_webhooks_form():
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    assert generate_secret() != secret


@pytest.mark.parametrize("secret", [
    "not-a-secret", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode(),
    "whsec_" + base64.b64encode(bytes(65)).decode(),
])
def test_malformed_secrets_are_refused(secret):
    with pytest.raises(InvalidParameter) as caught:
        secret_key(secret)
    assert caught.value.parameter == "secret"


def test_headers_verify_with_the_library_and_by_hand():
    secret = generate_secret()
    body = b'{"id":"evt_1","type":"session.created"}'
    import time
    headers = signature_headers(secret, secret_key(secret), "evt_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"id": "evt_1", "type": "session.created"}
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Cmdop-Signature"] == "sha256=" + expected
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):  # a replay from long ago is refused
        old = signature_headers(secret, secret_key(secret), "evt_1", int(time.time()) - 3600, body)
        Webhook(secret).verify(body, old)


async def test_delivered_requests_verify(clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory()
    given = generate_secret()
    hook = await hooks.create(WS, receiver.url, ["*"], secret=given)
    assert hook.secret == given
    generated = await hooks.create(WS, receiver.url, ["session.created"])
    await engine.create_session(WS, "mach_1", "host")
    await receiver.wait_for(2)
    test = await hooks.send_test(WS, hook.id)
    assert test.success
    secrets_seen = set()
    for request in receiver.requests:
        # Exactly one of the two secrets signs each request.
        for secret in (given, generated.secret):
            try:
                payload = Webhook(secret).verify(request.body, request.headers)
            except WebhookVerificationError:
                continue
            secrets_seen.add(secret)
            assert payload["id"] == request.headers["webhook-id"]
            digest = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(request.headers["x-cmdop-signature"], "sha256=" + digest)
            break
        else:
            pytest.fail(f"request not signed by either secret: {request.headers}")
    assert secrets_seen == {given, generated.secret}


async def test_a_rotated_secret_signs_the_next_delivery(
        clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory()
    hook = await hooks.create(WS, receiver.url, ["*"])
    rotated = await hooks.update(WS, hook.id, secret=None)
    assert rotated.secret and rotated.secret != hook.secret
    await hooks.send_test(WS, hook.id)
    request = receiver.requests[-1]
    Webhook(rotated.secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(hook.secret).verify(request.body, request.headers)
