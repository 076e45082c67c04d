"""Simulated agents by the thousand: behaviours, fleets and two drivers.

    plans = plan_fleet(1000, duration=3600, weights=SCENARIOS["mixed"], seed=7, operators=0.1,
                       busy=0.1, observers=0.05)
    result = await InProcessFleet(engine, "ws_sim", plans, duration=3600).run()  # MockClock
    result = await run_sim(SimConfig(url=..., agent_token=..., agents=1000, duration=60))

The behaviours (``_behaviour.py``, ``_agent.py``, and ``_operator.py`` for operators who
attach to a share of the sessions and run commands on them) are a pure model, and so is the
machines' shell (``_shell.py``: what a command exits with, tabled there), the output agents
write and keep to resend (``_output.py``) and the people who watch it through attach streams,
each checked byte for byte against it (``_stream.py``); the in-process driver
(``_inprocess.py``) runs it against an engine from one task, the wire driver (``_wire.py``,
``_fleet.py``) over real WebSockets (and the REST API, for operators) from one or several
processes. Both check the server against what the agents and operators did
(``_check.py``), and every stream client's bytes against its agent's (``_stream.py``).
"""

from ._agent import AgentRun, SessionExpect, Step
from ._behaviour import (
    SCENARIOS,
    SHELL,
    Act,
    AgentPlan,
    Kind,
    ObserverVisit,
    OperatorVisit,
    Scripted,
    parse_weights,
    plan_fleet,
)
from ._check import check_over_rest, disagreements
from ._fleet import SimConfig, agents_per_process, run_sim
from ._inprocess import InProcessFleet
from ._operator import OperatorRun, OpStep
from ._output import OUTPUT_KEEP, OutputLog
from ._result import SimResult
from ._shell import exit_code_of
from ._stream import ObserverRun, ObsStep, StreamClient
from ._wire import WireConfig, WireFleet, node_urls

__all__ = [
    "OUTPUT_KEEP",
    "SCENARIOS",
    "SHELL",
    "Act",
    "AgentPlan",
    "AgentRun",
    "InProcessFleet",
    "Kind",
    "ObsStep",
    "ObserverRun",
    "ObserverVisit",
    "OpStep",
    "OperatorRun",
    "OperatorVisit",
    "OutputLog",
    "Scripted",
    "SessionExpect",
    "SimConfig",
    "SimResult",
    "Step",
    "StreamClient",
    "WireConfig",
    "WireFleet",
    "agents_per_process",
    "check_over_rest",
    "disagreements",
    "exit_code_of",
    "node_urls",
    "parse_weights",
    "plan_fleet",
    "run_sim",
]
