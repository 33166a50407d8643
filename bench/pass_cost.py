"""Provider requests a sync pass costs, counted at the simulators, in the freshness
benchmark's shape (10 pipelines x 3 stages; Buddy: 3 projects of 10 pipelines; Qovery:
10 projects of 3 environments), every flow with finished history and nothing running.

Prints per provider: the first (full) pass, a pass where nothing changed, and a pass
after one flow got a new run that finished with the same status as its last; then, for
an hour of passes EVERY seconds apart where nothing changes, the dearest pass and the
mean (the safety re-read of what change detection skips is spread over them: each
thing re-read within REREAD_EVERY, RUNBOARD_FULL_READ_EVERY's default). Each pass is a
fresh client handed what the last one left (`change_state`), as the sync does.
Deterministic (simulated clock; no Runboard database): counts, not timings.

    .venv/bin/python bench/pass_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PIPELINES, STAGES = 10, 3
EVERY, REREAD_EVERY = 120.0, 3600.0


def build(key: str):
    """(sim, provider class, scope, finish_one, clock): finish_one adds a run to one flow
    that ends as that flow's last did."""
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
            *flows[4], buddy.BUILD_PLAN, age=600), clock
    if key == "northflank":
        # The limit raised (Northflank does on request) for an hour of passes.
        sim = northflank.NorthflankSimulator(token="bench", clock=clock, rate_limit=5000)
        flows = [(f"pipeline-{p}", s) for p in range(PIPELINES) for s in northflank.STAGES]
        for flow in flows:
            sim.add_release(*flow, northflank.RELEASE_PLAN, age=7200)
        return sim, NorthflankProvider, {"project": sim.project}, lambda: sim.add_release(
            *flows[4], northflank.RELEASE_PLAN, age=600), clock
    sim = qovery.QoverySimulator(token="bench", clock=clock)
    organization = sim.add_organization("Bench")
    flows = [sim.add_environment(sim.add_project(organization, f"project-{p}"), name)
             for p in range(PIPELINES) for name in ("development", "staging", "production")]
    for flow in flows:
        sim.add_deployment(flow, qovery.DEPLOY_PLAN, age=7200)
    return sim, QoveryProvider, {"organization": organization}, lambda: sim.add_deployment(
        flows[4], qovery.DEPLOY_PLAN, age=600), clock


def one_pass(sim, provider_class, scope, state: dict, full: bool,
             clock) -> tuple[int, dict, int]:
    with provider_class(sim.url, sim.token, scope) as client:
        client.change_state, client.full_read = dict(state), full
        client.clock, client.reread_every = (lambda: clock.now().timestamp()), REREAD_EVERY
        known = state.get("_known", {})
        client.known_runs = known
        before = len(sim.requests)
        runs = [r for page in client.list_runs() for r in page]
        new_state = {**client.change_state,
                     "_known": {**known, **{r.external_id: r.raw_status for r in runs}}}
        return len(sim.requests) - before, new_state, len(runs)


def main() -> None:
    print(f"{'provider':<11} {'full pass':>9} {'no change':>9} {'one change':>10}"
          f" {'hour: dearest':>13} {'mean':>5}")
    for key in ("buddy", "northflank", "qovery"):
        sim, provider_class, scope, finish_one, clock = build(key)
        with sim:
            full, state, _ = one_pass(sim, provider_class, scope, {}, True, clock)
            quiet, state, _ = one_pass(sim, provider_class, scope, state, False, clock)
            finish_one()
            changed, state, _ = one_pass(sim, provider_class, scope, state, False, clock)
            # Buddy skips nothing (every pass is the same); its simulated rate limit
            # would stop an hour of passes.
            hour = [quiet] if key == "buddy" else []
            for _ in range(0 if key == "buddy" else int(REREAD_EVERY / EVERY)):
                clock.advance(EVERY)
                cost, state, _ = one_pass(sim, provider_class, scope, state, False, clock)
                hour.append(cost)
        print(f"{key:<11} {full:>9} {quiet:>9} {changed:>10} {max(hour):>13}"
              f" {sum(hour) / len(hour):>5.1f}")


if __name__ == "__main__":
    main()
