"""Schemathesis against the served ``/openapi.json``: every operation, positive and negative.

The harness is synchronous (Schemathesis sends with ``requests``); the test runs it on a worker
thread while the server and its live fixture run on the trio loop. Path parameters are drawn
half the time from a pool of real ids (live, pending and ended sessions, their clients and
commands, webhooks and their deliveries, and another workspace's ids), so operations get past
404 as well as to it.

Checks: Schemathesis' defaults (no server error, status codes, content types, headers and bodies
conforming to the document, positive data accepted, negative data rejected) plus
:func:`error_envelope`: every error answer is ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

#: The default seed of the CI run; ``TETHER_FUZZ_SEED`` picks another.
DEFAULT_SEED = 20260214
#: Parameters whose meaning a schema cannot state: a cursor must name an existing item, a
#: webhook URL must be a reachable http(s) URL, events must be known event types, a secret has a
#: format. A positive case may be refused (400 ``invalid_parameter``) for these and only these.
SEMANTIC = frozenset({"before", "after", "url", "events", "secret"})
#: Parameters whose values the pool can supply, in the groups that must agree with each other.
_SESSION_KEYS = ("session_id", "client_id", "command_id")
_WEBHOOK_KEYS = ("webhook_id", "delivery_id")


@dataclass
class IdPool:
    """Real ids, refreshed between operations (the trio side assigns whole lists)."""

    sessions: list[dict[str, str]] = field(default_factory=list)  # session_id, client_id, ...
    webhooks: list[dict[str, str]] = field(default_factory=list)  # webhook_id, delivery_id
    machines: list[str] = field(default_factory=list)


@dataclass
class FuzzResult:
    seed: int
    cases: int = 0
    per_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Positive cases refused for a parameter in ``SEMANTIC``.
    semantic_400: int = 0


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer carries the envelope ``{"error": {"code", "message", "details"}}``."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"error body is not JSON: {response.status_code} {response.text[:200]!r} "
            f"for {response.request.method} {response.request.url[:300]}") from None
    if not (isinstance(body, dict) and set(body) == {"error"}):
        raise AssertionError(f"error body is not the envelope: {response.text[:200]!r}")
    error = body["error"]
    if not (isinstance(error, dict) and set(error) == {"code", "message", "details"}
            and isinstance(error["code"], str) and isinstance(error["message"], str)
            and isinstance(error["details"], dict)):
        raise AssertionError(f"error envelope malformed: {response.text[:200]!r}")
    return True


def _mixer(pool: IdPool) -> Callable[[Any], Any]:
    def mix(drawn: tuple[Any, int, int]) -> Any:
        params, choice, pick = drawn
        if not isinstance(params, dict) or choice == 0:
            return params  # as generated (random strings: the 404 and 400 paths)
        params = dict(params)
        if "session_id" in params and pool.sessions:
            bundle = pool.sessions[pick % len(pool.sessions)]
            for key in _SESSION_KEYS:
                if key in params and key in bundle and (choice != 2 or key == "session_id"):
                    params[key] = bundle[key]
        if "webhook_id" in params and pool.webhooks:
            bundle = pool.webhooks[pick % len(pool.webhooks)]
            for key in _WEBHOOK_KEYS:
                if key in params and key in bundle:
                    params[key] = bundle[key]
        if "machine_id" in params and pool.machines:
            params["machine_id"] = pool.machines[pick % len(pool.machines)]
        return params

    return mix


def run_fuzz(
    base_url: str,
    api_key: str,
    pool: IdPool,
    *,
    positive: int,
    negative: int,
    seed: int | None = None,
    refresh: Callable[[], None] = lambda: None,
) -> FuzzResult:
    """Fuzz every operation of the served document; failures are collected, not raised."""
    seed = int(os.environ.get("TETHER_FUZZ_SEED", DEFAULT_SEED)) if seed is None else seed
    result = FuzzResult(seed=seed)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    mix = _mixer(pool)

    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        return st.tuples(strategy, st.integers(0, 2), st.integers(0, 2**31)).map(mix)

    schema.hook(before_generate_path_parameters)
    # The event stream never ends by itself: read its first event (``retry:``), then stop.
    schema.config.max_stream_events = 1
    session = requests.Session()
    headers = {"Authorization": f"Bearer {api_key}"}
    operations = [op.ok() for op in schema.get_all_operations()]
    # Terminations last, so the reads see live sessions; the pool is refreshed between all.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    rng = random.Random(seed)
    for operation in operations:
        refresh()
        label = operation.label
        for mode, count in ((GenerationMode.POSITIVE, positive),
                            (GenerationMode.NEGATIVE, negative)):
            if count:
                _fuzz_operation(operation, mode, count, rng.getrandbits(64), base_url, session,
                                headers, result, label)
    session.close()
    return result


def _fuzz_operation(
    operation: Any, mode: GenerationMode, count: int, seed: int, base_url: str,
    session: requests.Session, headers: dict[str, str], result: FuzzResult, label: str,
) -> None:
    auth = headers["Authorization"]
    timeout = 1 if operation.path.endswith("/stream") else 10
    before = result.cases

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=count, deadline=None, database=None, derandomize=False,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        result.cases += 1
        # Schemathesis writes a made-up bearer token where the document asks for one, and leaves
        # it out where it tests that a missing one is refused: put the real key in its place.
        if case.headers:
            for name in list(case.headers):
                if name.lower() == "authorization":
                    case.headers[name] = auth
        response = case.call(base_url=base_url, session=session,
                             timeout=timeout)
        status = response.status_code
        result.statuses[status] = result.statuses.get(status, 0) + 1
        excluded = []
        if status == 410 and response.json()["error"]["code"] == "events_gone":
            # A well-formed event id of another run (or past the retention): 410 is the
            # document's answer for it, not a refusal of the request.
            excluded.append(positive_data_acceptance)
        if mode is GenerationMode.POSITIVE and status == 400:
            parameter = response.json()["error"]["details"].get("parameter")
            if parameter in SEMANTIC:
                result.semantic_400 += 1
                excluded.append(positive_data_acceptance)
        case.validate_response(response, additional_checks=[error_envelope],
                               excluded_checks=excluded,
                               transport_kwargs={"base_url": base_url, "session": session,
                                                 "timeout": timeout})

    try:
        fuzz()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing negative to generate (an operation without parameters or body)
    except (Exception, BaseExceptionGroup) as error:  # a failed check: report all, go on
        result.failures.append(f"{label} [{mode.value}] seed={seed}: {error}")
    name = f"{label} [{mode.value}]"
    result.per_operation[name] = result.per_operation.get(name, 0) + result.cases - before
