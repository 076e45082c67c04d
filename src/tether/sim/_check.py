"""The self-check: what the server shows of a session against what its agent and operators did.

:func:`disagreements` compares one session's expectation with the server's detail and history
views as JSON (the REST API's shapes; the in-process driver renders the engine's views the same
way). :func:`check_over_rest` reads those views with httpx and an API key, re-reading a session
that disagrees a few times before counting it: frames travel on the agent's socket, reads on
another connection, so a change is visible "soon", not "before the next read". Against a
cluster it reads each session on a node other than the one its agent was last on, so what
one node shows is held to what happened on another.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import httpx
import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from ._agent import SessionExpect


def disagreements(
    expect: SessionExpect, detail: dict[str, Any] | None, history: list[dict[str, Any]] | None,
    now: float, margin: float,
) -> list[str]:
    """Every way the server's views of a session disagree with ``expect`` at ``now``."""
    if detail is None:
        return ["session not found"]
    problems = []
    allowed = expect.allowed(now, margin)
    status = detail.get("status")
    if status not in allowed:
        problems.append(f"status {status} (reason {detail.get('reason')}), "
                        f"expected {' or '.join(allowed)}")
    else:
        reasons = allowed[status]
        if reasons and detail.get("reason") not in reasons:
            problems.append(f"reason {detail.get('reason')}, expected {' or '.join(reasons)}")
    if detail.get("machine_id") != expect.machine_id:
        problems.append(f"machine_id {detail.get('machine_id')}, expected {expect.machine_id}")
    cut = expect.server_ended  # the server may have applied only the agent's earlier frames
    if expect.telemetry is not None:
        t = detail.get("telemetry") or {}
        shown = (t.get("cpu_percent"), t.get("memory_percent"), t.get("disk_percent"))
        if cut:
            if t and shown not in expect.telemetry_sent:
                problems.append(f"telemetry {shown}, expected one of the "
                                f"{len(expect.telemetry_sent)} samples sent on the session")
        elif shown != expect.telemetry:
            problems.append(f"telemetry {shown}, expected {expect.telemetry}")
    clients = detail.get("attached_clients")
    if isinstance(clients, list):
        expected = 0 if status in _FINAL else expect.clients
        if len(clients) != expected:
            problems.append(f"{len(clients)} attached clients, expected {expected}")
    if history is not None:
        shown_commands = [(h.get("command_id"), h.get("command"), h.get("exit_code"))
                          for h in history]
        made = expect.commands
        if expect.maybe_lost:  # reported just before its node went away: may have died with it
            lost = set(expect.maybe_lost) - set(shown_commands)
            made = [c for c in made if c not in lost]
        if cut:
            made = made[:len(shown_commands)]
        if shown_commands != made:
            problems.append(f"history {shown_commands}, expected {expect.commands}"
                            + (" or a prefix of it" if cut else "")
                            + (f" less any of {expect.maybe_lost}" if expect.maybe_lost else ""))
        if expect.operator_commands:
            problems.extend(_operator_disagreements(
                expect, history, lost_ok=cut,
                maybe_lost={c[0] for c in expect.maybe_lost}))
    return problems


_FINAL = ("DISCONNECTED", "ERROR")


def _operator_disagreements(expect: SessionExpect, history: list[dict[str, Any]],
                            lost_ok: bool = False, maybe_lost: Collection[str] = ()
                            ) -> list[str]:
    """Every command the server accepted from an operator must be in the history as given,
    with the exit code the machine's shell gives it (``lost_ok``: or missing, lost with a
    session the server ended before the agent's answer reached it; ``maybe_lost``: ids whose
    answer went to a node just before it went away)."""
    by_id = {h.get("command_id"): h for h in history}
    problems = []
    for command_id, command, exit_code, user_email in expect.operator_commands:
        entry = by_id.get(command_id)
        if entry is None:
            if lost_ok or command_id in maybe_lost:
                continue
            problems.append(f"operator command {command_id} ({command!r}) not in history")
            continue
        shown = (entry.get("command"), entry.get("exit_code"), entry.get("user_email"))
        if shown != (command, exit_code, user_email):
            problems.append(f"operator command {command_id} shown as {shown}, "
                            f"expected {(command, exit_code, user_email)}")
    return problems


async def check_over_rest(
    base_url: str | Sequence[str],
    api_key: str,
    sessions: Sequence[SessionExpect],
    now: Callable[[], float],
    *,
    margin: float = 2.0,
    retries: int = 10,
    concurrency: int = 16,
    report: Callable[[SessionExpect, list[str]], None] | None = None,
) -> int:
    """Read every session over REST; return how many disagree (after ``retries`` re-reads).

    ``base_url``: the server, or a cluster's nodes (a session is read on the node after the
    one its agent was last on, :attr:`SessionExpect.node`). A session that cannot be read (HTTP
    errors, every attempt) counts as disagreeing."""
    mismatches = 0
    todo = list(sessions)
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30,
            limits=limits)) for url in urls]

        async def views(expect: SessionExpect
                        ) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
            client = clients[(expect.node + 1) % len(clients)]
            sid = expect.session_id
            r = await client.get(f"/v1/sessions/{sid}")
            if r.status_code == 404:
                return None, None
            r.raise_for_status()
            h = await client.get(f"/v1/sessions/{sid}/history", params={"limit": 1000})
            h.raise_for_status()
            return r.json()["data"], h.json()["data"]

        async def one(expect: SessionExpect) -> None:
            nonlocal mismatches
            problems: list[str] = []
            for attempt in range(retries + 1):
                try:
                    detail, history = await views(expect)
                except httpx.HTTPError as error:  # a loaded server may reset a connection
                    problems = [f"could not read it: {error!r}"]
                else:
                    problems = disagreements(expect, detail, history, now(), margin)
                    if not problems:
                        return
                if attempt < retries:
                    await trio.sleep(0.05 * (attempt + 1))
            mismatches += 1
            if report is not None:
                report(expect, problems)

        async def worker() -> None:
            while todo:
                await one(todo.pop())

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return mismatches
