"""A simulation run's summary, as ``tether sim --json`` prints it."""

from __future__ import annotations

import msgspec


class SimResult(msgspec.Struct, kw_only=True):
    """The summary of one run. ``errors`` counts protocol errors and refused or failed steps;
    ``mismatches`` counts sessions whose server view disagreed with what their agent did."""

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
    seed: int = 0
    scenario: str = "mixed"
    kinds: dict[str, int] = msgspec.field(default_factory=dict)
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.mismatches == 0

    def summary(self) -> str:
        lines = [
            f"agents {self.agents} (in {self.processes} process"
            f"{'es' if self.processes != 1 else ''}), peak connected {self.connected_peak}",
            f"messages sent {self.messages_sent} ({self.messages_per_s:.1f}/s over "
            f"{self.duration_s:.1f} s)",
            "sessions " + ", ".join(f"{k} {v}" for k, v in sorted(self.sessions_by_status.items()))
            if self.sessions_by_status else f"sessions {self.sessions}",
            f"errors {self.errors}, mismatches {self.mismatches}"
            + ("" if self.checked else " (not checked: no --api-key)"),
        ]
        lines.extend(f"  {p}" for p in self.problems[:20])
        return "\n".join(lines)
