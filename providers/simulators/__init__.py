"""Simulators of each provider's API, for tests and the demo (provider key -> class)."""

from providers.simulators.base import Simulator
from providers.simulators.buddy import BuddySimulator

SIMULATORS: dict[str, type[Simulator]] = {
    "buddy": BuddySimulator,
}
