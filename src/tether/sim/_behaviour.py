"""What simulated agents do, as a pure model: no trio, no sockets, no engine.

A fleet is a list of :class:`AgentPlan`: each agent has a *kind* (its behaviour), a start
offset and a short script of lifecycle actions at fixed times within the run, all drawn from
one seeded ``random.Random``. Heartbeats are not scripted: an agent heartbeats on a fixed period
while it is connected. A share of machines also get operator visits (:class:`OperatorVisit`):
someone attaches to the machine's session, runs a few commands through the server and detaches.
Drivers (in-process, over the wire) turn plans into steps with
:class:`tether.sim._agent.AgentRun` and :class:`tether.sim._operator.OperatorRun`.

Times here are seconds from the start of the run (the simulation's own clock), in steps of
0.1 s: agents that act at the same instant are served in one pass of a driver, which is what
lets the in-process driver run 10,000 agents through a virtual hour in seconds.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from ._shell import exit_code_of


class Kind(enum.StrEnum):
    """An agent's behaviour over the run."""

    STEADY = "steady"  # heartbeats with changing telemetry, nothing else
    COMMANDS = "commands"  # also reports commands it ran
    CYCLER = "cycler"  # background / foreground cycles
    FLAKY = "flaky"  # a network drop, resumed with its token within the grace period
    LOST = "lost"  # a network drop that outlasts the grace period, then a fresh hello
    RESTARTER = "restarter"  # its process restarts: a fresh hello without the resume token
    LEAVER = "leaver"  # says goodbye
    CRASHER = "crasher"  # reports a fatal error


#: Named mixes for ``--scenario``: kind -> weight.
SCENARIOS: dict[str, dict[Kind, float]] = {
    "mixed": {
        Kind.STEADY: 40, Kind.COMMANDS: 20, Kind.CYCLER: 10, Kind.FLAKY: 10, Kind.LOST: 5,
        Kind.RESTARTER: 5, Kind.LEAVER: 5, Kind.CRASHER: 5,
    },
    "steady": {Kind.STEADY: 1},
    "busy": {Kind.STEADY: 1, Kind.COMMANDS: 2, Kind.CYCLER: 1},
    "churn": {
        Kind.STEADY: 10, Kind.FLAKY: 30, Kind.LOST: 20, Kind.RESTARTER: 20, Kind.LEAVER: 10,
        Kind.CRASHER: 10,
    },
}


def parse_weights(text: str) -> dict[Kind, float]:
    """``--scenario`` as a name from :data:`SCENARIOS` or as ``kind=weight,kind=weight``."""
    if text in SCENARIOS:
        return dict(SCENARIOS[text])
    weights: dict[Kind, float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        try:
            kind = Kind(name)
            weight = float(value) if eq else 1.0
        except ValueError:
            raise ValueError(
                f"unknown scenario {text!r}: use one of {', '.join(SCENARIOS)} "
                f"or kind=weight pairs of {', '.join(k.value for k in Kind)}"
            ) from None
        if weight < 0:
            raise ValueError(f"weight of {name} must not be negative")
        weights[kind] = weight
    if not sum(weights.values()) > 0:
        raise ValueError("the weights must not all be zero")
    return weights


class Act(enum.StrEnum):
    """A scripted lifecycle action."""

    COMMAND = "command"
    BACKGROUND = "background"
    FOREGROUND = "foreground"
    DROP = "drop"  # the network goes: the socket closes without goodbye
    RESTART = "restart"  # the process restarts: socket gone, fresh hello, no resume token
    GOODBYE = "goodbye"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Scripted:
    """One scripted action at ``at`` seconds into the run.

    For ``DROP``, ``offline`` is how long the agent stays away as a fraction of the grace
    period (below 1: it resumes with its token; above 1: it outlasts the grace period and comes
    back with a fresh hello, if the run lasts that long). For ``COMMAND``, ``command`` and
    ``exit_code`` say what it ran.
    """

    at: float
    act: Act
    offline: float = 0.0
    command: str = ""
    exit_code: int = 0


#: What simulated operators run on the machines they visit, each with the exit code the machines'
#: shell gives it (:func:`~tether.sim._shell.exit_code_of`, whose docstring tables every code).
#: An agent answers a ``run_command`` with :func:`exit_code_of` its text, whatever the text.
SHELL: dict[str, int] = {
    command: exit_code_of(command)
    for command in ("uptime", "hostname", "df -h /", "systemctl is-active nginx",
                    "grep -q ERROR /var/log/app.log", "test -d /srv/releases/next",
                    "ls /nonexistent", "tail -n 20 /var/log/syslog")
}


@dataclass(frozen=True, slots=True)
class OperatorVisit:
    """An operator's visit to a machine's session, ``at`` seconds into the run.

    The operator attaches (as ``user_email``, mode operator), runs ``commands`` one every
    ``gap`` seconds and detaches ``gap`` seconds after the last. Each command comes with the
    exit code the machine's shell gives it (:data:`SHELL`), which is what its history entry
    must show.
    """

    at: float
    gap: float
    user_email: str
    commands: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ObserverVisit:
    """An observer watching a machine's session through an attach stream: attaches at ``at``,
    drops the stream at ``drop``, re-attaches from its offset at ``back``, leaves at
    ``leave`` (seconds into the run). See :class:`~tether.sim._stream.ObserverRun`."""

    at: float
    drop: float
    back: float
    leave: float
    user_email: str


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """Everything one agent will do, decided up front from the seed."""

    index: int
    kind: Kind
    machine_id: str
    machine_hostname: str
    start: float
    seed: int
    script: tuple[Scripted, ...] = field(default=())
    visits: tuple[OperatorVisit, ...] = field(default=())
    #: Its machine streams output continuously (:class:`~tether.sim._output.BusyWriter`).
    busy: bool = False
    watch: tuple[ObserverVisit, ...] = field(default=())
    #: Its agent writes output (commands print, a busy machine streams); off, none at all.
    output: bool = True


#: What agents of kind COMMANDS report they ran: mostly everyday commands, and some that fail
#: (exit codes as the machines' shell gives them: 1, 2, 3).
_COMMANDS = ("uptime", "df -h", "systemctl restart nginx", "ls /var/log", "whoami", "free -m",
             "journalctl -n 50", "docker ps", "ls -la", "cat /etc/hostname",
             "systemctl is-active nginx", "grep -c ERROR /var/log/app.log",
             "ls /srv/releases/next")


def _script(kind: Kind, rng: random.Random, duration: float) -> tuple[Scripted, ...]:
    def when(lo: float = 0.1, hi: float = 0.7) -> float:
        return round(rng.uniform(lo, hi) * duration, 1)

    if kind is Kind.COMMANDS:
        times = sorted(when(0.05, 0.85) for _ in range(rng.randint(1, 5)))
        commands = [rng.choice(_COMMANDS) for _ in times]
        return tuple(
            Scripted(at=t, act=Act.COMMAND, command=c, exit_code=exit_code_of(c))
            for t, c in zip(times, commands, strict=True)
        )
    if kind is Kind.CYCLER:
        times = sorted(when(0.05, 0.85) for _ in range(rng.randint(1, 4)))
        return tuple(
            Scripted(at=t, act=Act.BACKGROUND if i % 2 == 0 else Act.FOREGROUND)
            for i, t in enumerate(times)
        )
    if kind is Kind.FLAKY:
        return (Scripted(at=when(), act=Act.DROP, offline=round(rng.uniform(0.1, 0.6), 3)),)
    if kind is Kind.LOST:
        return (Scripted(at=when(0.05, 0.4), act=Act.DROP, offline=round(rng.uniform(1.2, 2), 3)),)
    if kind is Kind.RESTARTER:
        return (Scripted(at=when(), act=Act.RESTART),)
    if kind is Kind.LEAVER:
        return (Scripted(at=when(), act=Act.GOODBYE),)
    if kind is Kind.CRASHER:
        return (Scripted(at=when(), act=Act.FATAL),)
    return ()


def _visits(rng: random.Random, index: int, start: float,
            duration: float) -> tuple[OperatorVisit, ...]:
    """One or two visits after the agent starts, one after the other, over by 0.9 of the run
    (a short run's last visit may be cut off by its end: nothing is done at or after it)."""
    lo, hi = start + 0.05 * duration, 0.7 * duration
    if lo >= hi:
        return ()
    gap = max(0.1, round(min(rng.uniform(0.5, 5.0), 0.04 * duration), 1))
    commands = list(SHELL)
    visits = []
    free = 0.0  # when the previous visit is over
    for at in sorted(round(rng.uniform(lo, hi), 1) for _ in range(rng.choice((1, 1, 2)))):
        chosen = tuple((c, SHELL[c]) for c in rng.sample(commands, rng.randint(1, 3)))
        at = max(at, free)
        free = round(at + gap * (len(chosen) + 2), 1)
        visits.append(OperatorVisit(at=at, gap=gap, commands=chosen,
                                    user_email=f"operator-{index % 7}@sim.tether.test"))
    return tuple(visits)


def _watch(rng: random.Random, index: int, start: float,
           duration: float) -> tuple[ObserverVisit, ...]:
    """One observer visit after the agent starts, over by 0.9 of the run."""
    at = round(rng.uniform(start + 0.05 * duration, 0.5 * duration), 1)
    span = 0.9 * duration - at
    if span < 0.4:
        return ()
    drop = round(at + rng.uniform(0.2, 0.4) * span, 1)
    back = round(drop + rng.uniform(0.05, 0.2) * span, 1)
    leave = round(max(back + 0.1, at + rng.uniform(0.8, 1.0) * span), 1)
    return (ObserverVisit(at=at, drop=drop, back=back, leave=leave,
                          user_email=f"observer-{index % 5}@sim.tether.test"),)


def plan_fleet(
    agents: int,
    duration: float,
    *,
    weights: dict[Kind, float] | None = None,
    seed: int = 0,
    ramp: float = 1.0,
    prefix: str | None = None,
    first: int = 0,
    count: int | None = None,
    operators: float = 0.0,
    busy: float = 0.0,
    observers: float = 0.0,
    output: bool = True,
) -> list[AgentPlan]:
    """The plans of agents ``first .. first+count`` of a fleet of ``agents``.

    The whole fleet is drawn from ``seed`` in index order, so any slice of it (a worker
    process's share) is the same as in a one-process run. Agents start spread uniformly over
    the first ``ramp`` seconds. A share ``operators`` (0 to 1) of the machines get operator
    visits; they are drawn from each agent's own seed, so the rest of a plan is the same
    whatever the share. So are the shares ``busy`` of agents whose machines stream output
    continuously and ``observers`` of machines an observer watches through an attach stream.
    Without ``output`` agents write none (and nobody streams it): shares ``busy`` and
    ``observers`` then count for nothing.
    """
    for name, value in (("operators", operators), ("busy agents", busy),
                        ("observers", observers)):
        if not 0 <= value <= 1:
            raise ValueError(f"the share of {name} must be from 0 to 1")
    weights = weights or SCENARIOS["mixed"]
    kinds = [k for k, w in weights.items() if w > 0]
    kind_weights = [weights[k] for k in kinds]
    prefix = f"sim-{seed}" if prefix is None else prefix
    rng = random.Random(seed)
    plans = []
    stop = agents if count is None else min(agents, first + count)
    for index in range(stop):
        kind = rng.choices(kinds, kind_weights)[0]
        agent_seed = rng.getrandbits(32)
        start = round(rng.uniform(0, ramp), 1) if ramp > 0 else 0.0
        if index < first:
            continue
        script = _script(kind, random.Random(agent_seed), duration)
        visits: tuple[OperatorVisit, ...] = ()
        if operators > 0:
            visit_rng = random.Random(agent_seed ^ 0x0BE7A7)
            if visit_rng.random() < operators:
                visits = _visits(visit_rng, index, start, duration)
        is_busy = output and busy > 0 and random.Random(agent_seed ^ 0xB5).random() < busy
        watch: tuple[ObserverVisit, ...] = ()
        if output and observers > 0:
            watch_rng = random.Random(agent_seed ^ 0x0B5E7)
            if watch_rng.random() < observers:
                watch = _watch(watch_rng, index, start, duration)
        plans.append(AgentPlan(
            index=index, kind=kind, machine_id=f"{prefix}-{index:06d}",
            machine_hostname=f"{prefix}-host-{index % 100:02d}", start=start, seed=agent_seed,
            script=script, visits=visits, busy=is_busy, watch=watch, output=output,
        ))
    return plans


class TelemetryWalk:
    """Changing telemetry: CPU and memory wander, disk fills slowly, counters grow."""

    __slots__ = ("cpu", "disk", "memory", "rng", "rx", "samples", "tx")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed ^ 0x5EED)
        self.cpu = round(self.rng.uniform(5, 60), 1)
        self.memory = round(self.rng.uniform(20, 80), 1)
        self.disk = round(self.rng.uniform(10, 90), 1)
        self.rx = 0
        self.tx = 0
        self.samples = 0  # drawn so far

    @classmethod
    def replay(cls, seed: int, first: int, last: int) -> list[tuple[float, float, float]]:
        """CPU, memory and disk of samples ``first + 1 .. last`` (counted from 1) of the walk
        of ``seed``, drawn again."""
        walk = cls(seed)
        shown = []
        for k in range(1, last + 1):
            cpu, memory, disk, *_ = walk.sample(0)
            if k > first:
                shown.append((cpu, memory, disk))
        return shown

    def sample(self, uptime: float) -> tuple[float, float, float, int, int, int]:
        """The next sample: cpu, memory and disk percent, rx and tx bytes, uptime seconds."""
        self.samples += 1
        r = self.rng.random()
        self.cpu = round(min(100.0, max(0.0, self.cpu + (r - 0.5) * 20)), 1)
        self.memory = round(min(100.0, max(0.0, self.memory + (r - 0.5) * 4)), 1)
        self.disk = round(min(100.0, self.disk + r * 0.01), 2)
        self.rx += int(r * 50_000)
        self.tx += int(r * 20_000)
        return (self.cpu, self.memory, self.disk, self.rx, self.tx, int(uptime))
