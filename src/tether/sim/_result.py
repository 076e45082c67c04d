"""A simulation run's summary, as ``tether sim --json`` prints it."""

from __future__ import annotations

import msgspec


class SimResult(msgspec.Struct, kw_only=True):
    """The summary of one run. ``errors`` counts protocol errors and refused or failed steps;
    ``mismatches`` counts sessions whose server view disagreed with what their agent did.

    Operators: ``operator_visits`` attached a client, ``operator_commands`` were accepted by the
    server (each must show in its session's history), ``operator_answered`` run_command frames
    the agents answered, ``operator_refused`` steps the server refused (not errors: the session
    was no longer CONNECTED), ``operator_skipped`` steps not taken because the agent knew its
    session was not CONNECTED or, for a late driver, the run was over. ``notes`` say what a run
    left out and why.

    ``ended_by_server`` counts sessions the server ended under their agents (closed with reason
    ``terminated``: ``DELETE /v1/sessions/{id}``, or ``replaced``: another hello for the
    machine), or while they were away (a refused resume): not errors, as for a real fleet. The
    agents said a fresh hello after a short backoff; the check holds each ended session to its
    reason and expects the new one.

    ``failovers`` counts agents whose node went away under them (killed, restarting, draining)
    and that came back on another node (of ``nodes``); ``connect_retries`` the connections
    tried again meanwhile. Neither is an error: it is what a cluster is for.

    Output and attach streams: ``output_bytes`` the agents wrote to their sessions' output,
    ``output_resent`` bytes they sent again after resumes (from the welcome's
    ``output_offset``). ``stream_clients`` people who watched a session through attach streams
    (operators on their clients, observers), ``stream_reattaches`` the times they came back
    from their offset after a drop, ``stream_gaps`` the ``gap`` frames they got (bytes no
    longer retained), ``stream_refused`` streams the server refused (the session was not
    CONNECTED or BACKGROUND), ``stream_bytes`` the output bytes they received.
    ``output_mismatches`` counts clients whose bytes differ from what the agent wrote (a hash
    of each range compared, see ``_stream.py``), or who got a gap the retention does not
    explain: like ``mismatches``, any is a failure.
    """

    agents: int
    connected_peak: int
    messages_sent: int
    messages_per_s: float
    errors: int
    mismatches: int
    sessions: int = 0
    sessions_by_status: dict[str, int] = msgspec.field(default_factory=dict)
    checked: bool = False
    duration_s: float = 0.0
    wall_s: float = 0.0
    processes: int = 1
    nodes: int = 1
    seed: int = 0
    scenario: str = "mixed"
    kinds: dict[str, int] = msgspec.field(default_factory=dict)
    operator_visits: int = 0
    operator_commands: int = 0
    operator_answered: int = 0
    operator_refused: int = 0
    operator_skipped: int = 0
    ended_by_server: int = 0
    failovers: int = 0
    connect_retries: int = 0
    output_bytes: int = 0
    output_resent: int = 0
    stream_clients: int = 0
    stream_reattaches: int = 0
    stream_gaps: int = 0
    stream_refused: int = 0
    stream_bytes: int = 0
    output_mismatches: int = 0
    notes: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.mismatches == 0 and self.output_mismatches == 0

    def summary(self) -> str:
        lines = [
            f"agents {self.agents} (in {self.processes} process"
            f"{'es' if self.processes != 1 else ''}"
            f"{f', over {self.nodes} nodes' if self.nodes > 1 else ''}), "
            f"peak connected {self.connected_peak}",
            f"messages sent {self.messages_sent} ({self.messages_per_s:.1f}/s over "
            f"{self.duration_s:.1f} s)",
            "sessions " + ", ".join(f"{k} {v}" for k, v in sorted(self.sessions_by_status.items()))
            if self.sessions_by_status else f"sessions {self.sessions}",
            f"operators: {self.operator_visits} visits, {self.operator_commands} commands "
            f"accepted, {self.operator_answered} answered, {self.operator_refused} refused, "
            f"{self.operator_skipped} skipped",
            f"sessions ended by the server {self.ended_by_server} (terminated or replaced: "
            "not errors, their agents reconnect)",
            f"failovers {self.failovers} (a node went away; its agents came back on another), "
            f"connections retried {self.connect_retries}",
            f"output {self.output_bytes} bytes written, {self.output_resent} resent; streams: "
            f"{self.stream_clients} clients, {self.stream_reattaches} re-attaches, "
            f"{self.stream_gaps} gaps, {self.stream_refused} refused, {self.stream_bytes} bytes "
            f"received, {self.output_mismatches} output mismatches",
            f"errors {self.errors}, mismatches {self.mismatches}"
            + ("" if self.checked else " (not checked: no --api-key)"),
        ]
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"  {p}" for p in self.problems[:20])
        return "\n".join(lines)
