"""Simulated agents by the thousand: behaviours, fleets and two drivers.

    plans = plan_fleet(1000, duration=3600, weights=SCENARIOS["mixed"], seed=7)
    result = await InProcessFleet(engine, "ws_sim", plans, duration=3600).run()  # MockClock
    result = await run_sim(SimConfig(url=..., agent_token=..., agents=1000, duration=60))

The behaviours (``_behaviour.py``, ``_agent.py``) are a pure model; the in-process driver
(``_inprocess.py``) runs it against an engine from one task, the wire driver (``_wire.py``,
``_fleet.py``) over real WebSockets from one or several processes. Both check the server
against what the agents did (``_check.py``).
"""

from ._agent import AgentRun, SessionExpect, Step
from ._behaviour import SCENARIOS, Act, AgentPlan, Kind, Scripted, parse_weights, plan_fleet
from ._check import check_over_rest, disagreements
from ._fleet import SimConfig, agents_per_process, run_sim
from ._inprocess import InProcessFleet
from ._result import SimResult
from ._wire import WireConfig, WireFleet

__all__ = [
    "SCENARIOS",
    "Act",
    "AgentPlan",
    "AgentRun",
    "InProcessFleet",
    "Kind",
    "Scripted",
    "SessionExpect",
    "SimConfig",
    "SimResult",
    "Step",
    "WireConfig",
    "WireFleet",
    "agents_per_process",
    "check_over_rest",
    "disagreements",
    "parse_weights",
    "plan_fleet",
    "run_sim",
]
