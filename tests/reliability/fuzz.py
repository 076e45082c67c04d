"""Schemathesis against the served ``/openapi.json``: every operation, every phase, every check.

The harness is what ``st run --checks all --phases examples,coverage,fuzzing,stateful`` does,
through Schemathesis' own engine (``schemathesis.engine.from_schema(schema).execute()``), so the
CLI and this test agree. It is synchronous (Schemathesis sends with ``requests``); the test runs
it on a worker thread while the server and its live fixture run on the trio loop.

- **Examples** sends the document's examples; **coverage** its boundary and near-boundary
  values, missing and unexpected parts, undeclared methods; **fuzzing** generated positive and
  negative requests; **stateful** follows the document's links (create a session -> read,
  attach, run a command, terminate it; create a webhook -> read, change, test, list its
  deliveries -> retry one, delete it).
- Path parameters of generated requests are drawn half the time from a pool of real ids (live,
  pending and ended sessions, their clients and commands, webhooks and their deliveries, and
  another workspace's ids), so operations get past 404 as well as to it.
- Checks: all of Schemathesis' (``--checks all``: no server error, status codes, content types,
  headers and bodies conforming to the document, schema-valid data accepted, schema-violating
  data rejected, undeclared methods answered 405 with ``Allow``, auth enforced, a created
  resource available, a deleted one gone...) plus :func:`error_envelope`: every error answer
  is ``{"error": {"code", "message", "details"}}``. No check is excluded or filtered.

Two settings say what the contract means, and are the only ones that touch a check: the
feed's cursor operations may answer a schema-valid ``after`` with 410 (an event id the feed no
longer retains, or one of another server run: the documented ``events_gone``), so 410 is among
the statuses ``positive_data_acceptance`` expects for those two operations; and
``use_after_free`` is off for the reads of a session (:data:`_SESSION_READS`), because
``DELETE /v1/sessions/{session_id}`` terminates a session without deleting it. One adaptation
of Schemathesis' stateful phase says where scenarios may start (:data:`ROOTS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema
from schemathesis.engine.run import PhaseName

#: The default seed of the CI run; ``TETHER_FUZZ_SEED`` picks another.
DEFAULT_SEED = 20260214
PHASES = ("examples", "coverage", "fuzzing", "stateful")
#: Seconds an answer may take (``max_response_time``): a hang, not a slow machine.
MAX_RESPONSE_TIME = 5.0
#: Parameters whose values the pool can supply, in the groups that must agree with each other.
_SESSION_KEYS = ("session_id", "client_id", "command_id")
_WEBHOOK_KEYS = ("webhook_id", "delivery_id")
_POSITIVE_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
#: ``DELETE /v1/sessions/{session_id}`` terminates a session: the contract keeps an ended
#: session readable (``DISCONNECTED``, with its reason, history, commands and output) until
#: retention, so reading it after the DELETE answers 200 by design. ``use_after_free``, which
#: expects a 404 after a successful DELETE of the path, is the one check that does not apply
#: to these reads (the metrics of an ended session are a 409, so it stays on there); every
#: other check runs on them, and every check runs on every other operation (webhooks' DELETE
#: included).
_SESSION_READS = ("get_session", "get_session_history", "get_command", "get_session_output")


@dataclass
class IdPool:
    """Real ids, refreshed while the fuzzer runs (the trio side assigns whole lists)."""

    sessions: list[dict[str, str]] = field(default_factory=list)  # session_id, client_id, ...
    webhooks: list[dict[str, str]] = field(default_factory=list)  # webhook_id, delivery_id
    machines: list[str] = field(default_factory=list)


@dataclass
class FuzzResult:
    seed: int
    cases: int = 0
    per_operation: dict[str, int] = field(default_factory=dict)
    per_phase: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Phases that did not run, with why.
    skipped_phases: dict[str, str] = field(default_factory=dict)
    checks: set[str] = field(default_factory=set)
    #: Links the stateful phase followed (``source -> status -> target``).
    links_followed: set[str] = field(default_factory=set)
    #: Seconds the server took to answer, by operation; wall seconds by phase.
    seconds_per_operation: dict[str, float] = field(default_factory=dict)
    seconds_per_phase: dict[str, float] = field(default_factory=dict)
    seconds_per_scenario: dict[str, float] = field(default_factory=dict)


@schemathesis.check
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
        sessions, webhooks, machines = pool.sessions, pool.webhooks, pool.machines
        if "session_id" in params and sessions:
            bundle = sessions[pick % len(sessions)]
            for key in _SESSION_KEYS:
                if key in params and key in bundle and (choice != 2 or key == "session_id"):
                    params[key] = bundle[key]
        if "webhook_id" in params and webhooks:
            bundle = webhooks[pick % len(webhooks)]
            for key in _WEBHOOK_KEYS:
                if key in params and key in bundle:
                    params[key] = bundle[key]
        if "machine_id" in params and machines:
            params["machine_id"] = machines[pick % len(machines)]
        return params

    return mix


#: Operations that start a stateful scenario whatever Schemathesis' dependency heuristic says.
#: It reads the client-chosen ``machine_id`` (of the create body and the list's filter) as a
#: reference to a "Machine" resource that no operation creates, and so never starts a scenario
#: with ``POST /v1/sessions``: no create -> read -> terminate chain would ever run.
ROOTS = frozenset({"POST /v1/sessions", "GET /v1/sessions"})


def _start_scenarios_with_our_roots() -> None:
    """Make :data:`ROOTS` roots of the stateful phase (a choice of where to start, not a
    check: every request it makes is checked like any other)."""
    from schemathesis.specs.openapi import stateful

    heuristic = stateful.is_likely_root_transition
    if getattr(heuristic, "tether_roots", False):
        return

    def is_likely_root_transition(operation: Any, node: Any, produced: Any) -> bool:
        return operation.label in ROOTS or heuristic(operation, node, produced)

    is_likely_root_transition.tether_roots = True  # type: ignore[attr-defined]
    stateful.is_likely_root_transition = is_likely_root_transition


def config(api_key: str, seed: int, max_examples: int, max_steps: int) -> schemathesis.Config:
    """``--checks all --phases examples,coverage,fuzzing,stateful``, authenticated, seeded."""
    cfg = schemathesis.Config.from_dict({
        "seed": seed,
        "auth": {"openapi": {"apiKey": {"bearer": api_key}}},
        "generation": {"max-examples": max_examples, "mode": "all", "database": "none"},
        # Every check (``--checks all``); the operations below refine two of them.
        "checks": {"enabled": True, "max_response_time": MAX_RESPONSE_TIME},
        "phases": {"stateful": {"max-steps": max_steps}},
        # The event stream never ends by itself: read its first event (``retry:``), then stop.
        "max-stream-events": 1,
        "request-timeout": 10,
        "warnings": False,
        "operations": [
            # A live stream ends only when the server stops: read it for half a second (the
            # first frame comes at once), not for the whole request timeout.
            {"include-operation-id": "stream_events", "request-timeout": 0.5},
            {"include-operation-id": ["list_events", "stream_events"],
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*_POSITIVE_ACCEPTED, "410"]}}},
            {"include-operation-id": list(_SESSION_READS),
             "checks": {"use_after_free": {"enabled": False}}},
        ],
    })
    cfg.projects.override.phases.update(phases=list(PHASES))
    return cfg


def run_fuzz(
    base_url: str,
    api_key: str,
    pool: IdPool,
    *,
    max_examples: int,
    max_steps: int = 10,
    seed: int | None = None,
) -> FuzzResult:
    """Run every phase against the served document; failures are collected, not raised."""
    seed = int(os.environ.get("TETHER_FUZZ_SEED", DEFAULT_SEED)) if seed is None else seed
    result = FuzzResult(seed=seed)
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json", config=config(api_key, seed, max_examples, max_steps))
    mix = _mixer(pool)

    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        return st.tuples(strategy, st.integers(0, 2), st.integers(0, 2**31)).map(mix)

    schema.hook(before_generate_path_parameters)
    _start_scenarios_with_our_roots()
    started: dict[str, float] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            started[event.phase.name.value] = event.timestamp
        elif isinstance(event, events.PhaseFinished) and event.phase.name.value in started:
            name = event.phase.name.value
            result.seconds_per_phase[name] = round(event.timestamp - started[name], 1)
        if isinstance(event, events.ScenarioFinished):
            _record(result, event.phase, event.recorder)
            key = f"{event.phase.value} {event.recorder.label}"
            result.seconds_per_scenario[key] = round(
                result.seconds_per_scenario.get(key, 0) + event.elapsed_time, 1)
        elif isinstance(event, events.PhaseFinished) and event.status == Status.SKIP:
            result.skipped_phases[event.phase.name.value] = str(event.phase.skip_reason)
        elif isinstance(event, events.NonFatalError):
            result.failures.append(f"[{event.phase}] {event.label}: {event.info.title}: "
                                   f"{event.info.message}")
        elif isinstance(event, events.FatalError):
            result.failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            result.failures += [f"after the run: {f.title}: {f.message}" for f in event.failures]
    return result


def _record(result: FuzzResult, phase: PhaseName, recorder: Any) -> None:
    for case_id, interaction in recorder.interactions.items():
        node = recorder.cases.get(case_id)
        response = interaction.response
        if node is None or response is None:
            continue
        result.cases += 1
        label = node.value.operation.label
        result.per_operation[label] = result.per_operation.get(label, 0) + 1
        result.per_phase[phase.value] = result.per_phase.get(phase.value, 0) + 1
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        result.seconds_per_operation[label] = (
            result.seconds_per_operation.get(label, 0.0) + response.elapsed)
        if node.transition is not None and node.parent_id in recorder.cases:
            source = recorder.cases[node.parent_id].value.operation.label
            result.links_followed.add(f"{source} -> {label}")
    for case_id, checks in recorder.checks.items():
        for check in checks:
            result.checks.add(check.name)
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                result.failures.append(
                    f"[{phase.value}] {check.name}: {failure.title}\n{failure.message}\n"
                    f"{check.failure_info.code_sample}")
            elif check.status == Status.ERROR:
                result.failures.append(f"[{phase.value}] {check.name} crashed on {case_id}")
