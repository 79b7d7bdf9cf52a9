"""`bcfl simulate`: N members in one process, with the nodes' rules, over a seeded network.

``network.py`` is the logical clock and the links (delays, drops, partitions, members down);
``planner.py`` what a proposer puts in a block; ``simulator.py`` the members (Chain, Engine,
VoteGuard, FLChecks, training) and the run; ``options.py`` what a run is asked to do.
"""

from bcfl_cli.simulation.network import NetworkConfig, Partition
from bcfl_cli.simulation.options import Crash, SimOptions
from bcfl_cli.simulation.simulator import SimResult, Simulation

__all__ = ["Crash", "NetworkConfig", "Partition", "SimOptions", "SimResult", "Simulation"]
