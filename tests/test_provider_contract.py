"""Every registered provider, end to end against its simulator: the same contract.

A new provider gets these tests by being registered, with its simulator, in
providers/registry.py and providers/simulators/__init__.py.
"""

import logging
import ssl

import pytest

from dashboard import actions, sync
from dashboard.models import ActionRecord, Run
from providers import registry
from providers.base import FINISHED, Action, AuthError, BadPayload, Status, Unavailable
from providers.simulators import SIMULATORS

pytestmark = pytest.mark.django_db


def test_every_provider_has_a_simulator():
    assert set(SIMULATORS) == set(registry.PROVIDERS)


@pytest.mark.parametrize("key", sorted(registry.PROVIDERS))
def test_an_unrecognised_status_is_unknown_and_logged(key, caplog):
    provider = registry.PROVIDERS[key].__new__(registry.PROVIDERS[key])  # no HTTP client
    with caplog.at_level(logging.WARNING):
        assert provider.map_status("NEVER_DOCUMENTED_42") == Status.UNKNOWN
    assert "NEVER_DOCUMENTED_42" in caplog.text and key in caplog.text


def test_demo_data_syncs_into_the_shared_vocabulary(demo):
    sim, connection = demo
    first = sync.sync_connection(connection.pk)
    assert first.runs_written > 0
    runs = Run.objects.filter(connection=connection)
    assert runs.exists()
    assert set(runs.values_list("status", flat=True)) <= set(Status.values) - {Status.UNKNOWN}
    assert all(run.locator for run in runs)
    count = runs.count()
    sim.advance(600)
    sync.sync_connection(connection.pk)
    assert runs.count() == count, "a re-sync must update in place, never duplicate"


def test_cancel_reaches_the_provider_and_ends_cancelled(demo, django_user_model):
    sim, connection = demo
    user = django_user_model.objects.create_user("rm")
    sync.sync_connection(connection.pk)
    run = Run.objects.filter(connection=connection).exclude(status__in=FINISHED).first()
    assert run is not None, "the demo data should have a live run"
    record = actions.perform(run, user, Action.CANCEL, comment="contract test")
    assert record.state == ActionRecord.State.SUCCEEDED
    run.refresh_from_db()
    assert run.status in {Status.CANCELLING, Status.CANCELLED}
    sim.advance(120)
    sync.sync_connection(connection.pk)
    run.refresh_from_db()
    assert run.status == Status.CANCELLED


def test_unsupported_actions_are_refused_without_a_request(demo, django_user_model):
    sim, connection = demo
    user = django_user_model.objects.create_user("rm")
    sync.sync_connection(connection.pk)
    provider = connection.provider_class
    missing = [a for a in Action if a not in provider.actions]
    run = Run.objects.filter(connection=connection).first()
    sent = len(sim.requests)
    for action in missing:
        with pytest.raises(actions.ActionRefused, match="does not support"):
            actions.perform(run, user, action, comment="x")
    assert len(sim.requests) == sent


def client_for(sim, connection, token=None):
    return connection.provider_class(sim.url, token or sim.token, connection.scope, timeout=1)


@pytest.mark.parametrize(("fault", "error"), [
    ("error_500", Unavailable), ("error_503", Unavailable), ("disconnect", Unavailable),
    ("malformed", BadPayload),
])
def test_a_fault_at_any_request_of_a_pass_is_a_typed_error(demo, fault, error):
    sim, connection = demo
    before = len(sim.requests)
    with client_for(sim, connection) as client:
        assert list(client.list_runs())
    requests = len(sim.requests) - before
    assert requests >= 1
    for position in range(requests):
        sim.clear_faults()
        sim.inject(fault, after=position)
        with client_for(sim, connection) as client, pytest.raises(error):
            list(client.list_runs())


def test_a_slow_provider_times_out_as_unavailable(demo):
    sim, connection = demo
    sim.inject("slow", seconds=1.5)  # past the client's 1 s timeout
    with (client_for(sim, connection) as client,
          pytest.raises(Unavailable, match="did not answer in time")):
        list(client.list_runs())


def test_a_bad_token_is_an_auth_error(demo):
    sim, connection = demo
    with client_for(sim, connection, token="not-the-token") as client, pytest.raises(AuthError):
        list(client.list_runs())


def test_provider_clients_share_one_tls_context():
    """Each client built its own, loading the CA bundle again: ~30 ms of CPU for every
    sync pass, action and webhook read."""
    from providers.base import tls_context

    some_id = "0b5e9d52-8f4a-4c3e-9a31-2f0e6c1d7a10"  # (a project must be a uuid)
    clients = [cls("https://provider.invalid", "t", dict.fromkeys(cls.scope_required, some_id))
               for cls in registry.PROVIDERS.values()]
    try:
        contexts = {id(c._http._transport._pool._ssl_context) for c in clients}  # (httpcore's)
        assert contexts == {id(tls_context())}
        assert tls_context().verify_mode == ssl.CERT_REQUIRED
    finally:
        for c in clients:
            c.close()
