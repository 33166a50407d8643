"""Provider requests a sync pass costs, counted at the simulators, in the freshness
benchmark's shape (10 pipelines x 3 stages; Buddy: 3 projects of 10 pipelines; Qovery:
10 projects of 3 environments), every flow with finished history and nothing running.

Prints per provider: the first (full) pass, a pass where nothing changed, and a pass
after one flow got a new run that finished with the same status as its last. Each pass
is a fresh client handed what the last one left (`change_state`), as the sync does.
Deterministic (simulated clock; no Runboard database): counts, not timings.

    .venv/bin/python bench/pass_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PIPELINES, STAGES = 10, 3


def build(key: str):
    """(sim, provider class, scope, finish_one): finish_one adds a run to one flow that
    ends as that flow's last did."""
    from providers.buddy import BuddyProvider
    from providers.northflank import NorthflankProvider
    from providers.qovery import QoveryProvider
    from providers.simulators import buddy, northflank, qovery
    from providers.simulators.base import SimClock

    clock = SimClock(speed=0.0)
    if key == "buddy":
        sim = buddy.BuddySimulator(token="bench", clock=clock)
        flows = [(f"project-{s}", p + 1) for s in range(STAGES) for p in range(PIPELINES)]
        for flow in flows:
            sim.add_execution(*flow, buddy.BUILD_PLAN, age=7200)
        return sim, BuddyProvider, {"workspace": sim.workspace}, lambda: sim.add_execution(
            *flows[4], buddy.BUILD_PLAN, age=600)
    if key == "northflank":
        sim = northflank.NorthflankSimulator(token="bench", clock=clock)
        flows = [(f"pipeline-{p}", s) for p in range(PIPELINES) for s in northflank.STAGES]
        for flow in flows:
            sim.add_release(*flow, northflank.RELEASE_PLAN, age=7200)
        return sim, NorthflankProvider, {"project": sim.project}, lambda: sim.add_release(
            *flows[4], northflank.RELEASE_PLAN, age=600)
    sim = qovery.QoverySimulator(token="bench", clock=clock)
    organization = sim.add_organization("Bench")
    flows = [sim.add_environment(sim.add_project(organization, f"project-{p}"), name)
             for p in range(PIPELINES) for name in ("development", "staging", "production")]
    for flow in flows:
        sim.add_deployment(flow, qovery.DEPLOY_PLAN, age=7200)
    return sim, QoveryProvider, {"organization": organization}, lambda: sim.add_deployment(
        flows[4], qovery.DEPLOY_PLAN, age=600)


def one_pass(sim, provider_class, scope, state: dict, full: bool) -> tuple[int, dict, int]:
    with provider_class(sim.url, sim.token, scope) as client:
        client.change_state, client.full_read = dict(state), full
        known = state.get("_known", {})
        client.known_runs = known
        before = len(sim.requests)
        runs = [r for page in client.list_runs() for r in page]
        new_state = {**client.change_state,
                     "_known": {**known, **{r.external_id: r.raw_status for r in runs}}}
        return len(sim.requests) - before, new_state, len(runs)


def main() -> None:
    print(f"{'provider':<11} {'full pass':>9} {'no change':>9} {'one change':>10}")
    for key in ("buddy", "northflank", "qovery"):
        sim, provider_class, scope, finish_one = build(key)
        with sim:
            full, state, _ = one_pass(sim, provider_class, scope, {}, True)
            quiet, state, _ = one_pass(sim, provider_class, scope, state, False)
            finish_one()
            changed, state, _ = one_pass(sim, provider_class, scope, state, False)
        print(f"{key:<11} {full:>9} {quiet:>9} {changed:>10}")


if __name__ == "__main__":
    main()
