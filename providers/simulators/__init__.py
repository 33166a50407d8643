"""Simulators of each provider's API, for tests and the demo (provider key -> class)."""

from providers.simulators.base import Simulator
from providers.simulators.buddy import BuddySimulator
from providers.simulators.northflank import NorthflankSimulator
from providers.simulators.qovery import QoverySimulator
from providers.simulators.workflows import WorkflowsSimulator

SIMULATORS: dict[str, type[Simulator]] = {
    "buddy": BuddySimulator,
    "northflank": NorthflankSimulator,
    "qovery": QoverySimulator,
    "workflows": WorkflowsSimulator,
}
