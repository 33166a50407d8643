"""The loopback servers the tests talk to answer a kept-alive connection at once.

They write a response's headers and body apart. With Nagle's algorithm on, the body
waits for the client to acknowledge the headers, and a client delays that ACK by ~40 ms
(Linux's floor): every request on a reused connection took 40 ms or more, which made
whole test files several times slower. The median of a few dozen requests tells that
delay from a busy machine's noise.
"""

import statistics
import time

import httpx

REQUESTS = 30
LIMIT = 0.02  # seconds; the delayed ACK alone is 0.04


def median_request(url: str, **kwargs) -> float:
    with httpx.Client(timeout=5) as client:
        client.get(url, **kwargs)  # opens the connection the rest reuse
        took = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            client.get(url, **kwargs)
            took.append(time.perf_counter() - started)
    return statistics.median(took)


def test_a_simulator_answers_a_kept_alive_connection_without_delay(buddy_sim):
    took = median_request(f"{buddy_sim.url}/workspaces",
                          headers={"Authorization": "Bearer not-the-token"})  # its 401
    assert took < LIMIT, f"{took * 1000:.0f} ms a request"


def test_the_live_server_answers_a_kept_alive_connection_without_delay(live_server):
    took = median_request(f"{live_server.url}/healthz")
    assert took < LIMIT, f"{took * 1000:.0f} ms a request"
