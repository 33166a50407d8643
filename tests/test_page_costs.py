"""What a page costs when it is rendered afresh (the first viewer after a change): a
bounded number of queries that does not grow with the runs held, no unbounded COUNT over
the runs, and the same markup as the templates wrote (bench/pages.py measures the time)."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboard import schedule, sync
from dashboard.models import ActionRecord, Connection, Job, Run, data_changed, mark_superseded
from dashboard.prepared import numbered
from providers.base import EnvironmentData, JobData, ProjectData, RunData, Status

pytestmark = pytest.mark.django_db


def _runs(connection_, start, count, status=Status.SUCCEEDED, **fields):
    now = timezone.now()
    project = ProjectData("p1", "Shop")
    env = EnvironmentData("e1", "production", project)
    sync.upsert_runs(connection_, [
        RunData(external_id=f"r{n}", status=status, raw_status=status.value, locator={},
                name=f"Deploy #{n}", version=f"1.{n}", project=project, environment=env,
                pipeline_name="Deploy", created_at=now - timedelta(minutes=n),
                started_at=now - timedelta(minutes=n),
                jobs=[JobData("j1", "build", status, status.value)], **fields)
        for n in range(start, start + count)])


def _newer_runs_elsewhere(connection_, count=5000):
    """Many runs in another environment ("busy"), newer than any held: what a plan made
    for every environment weighs against a quiet one's."""
    from dashboard.models import Environment

    busy = Environment.objects.create(connection=connection_, external_id="busy", name="busy")
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO dashboard_run (connection_id, external_id, locator, environment_id,
              pipeline_id, pipeline_name, name, status, raw_status, version, branch, commit,
              triggered_by, created_at, started_at, cancelled_by, cancel_comment, web_url, raw,
              fingerprint, observed_at, updated_at)
            SELECT %s, 'x' || g, '{}', %s, '', '', '', 'succeeded', '', '', '', '', '',
              now() + g * interval '1 second', now(), '', '', '', '{}', '', now(), now()
            FROM generate_series(1, %s) g""", [connection_.pk, busy.pk, count])
        cursor.execute("ANALYZE dashboard_run")


def _afresh(client, path, **headers):
    """The queries of `path` with every cache emptied first."""
    client.get(path, headers=headers)
    cache.clear()
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, headers=headers)
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries]


@pytest.fixture
def manager_client(client, manager):
    client.force_login(manager)
    return client


def test_the_run_list_afresh_makes_few_queries_whatever_the_number_of_runs(
        manager_client, buddy_connection):
    _runs(buddy_connection, 0, 3)
    few = _afresh(manager_client, "/runs/")
    _runs(buddy_connection, 3, 120)  # more than two pages
    many = _afresh(manager_client, "/runs/")
    # The session, the user, the data version (with the strip's counts) and the list's
    # rows, connections and filter choices in one.
    assert len(few) == len(many) <= 4, many
    # The page counts nothing over the runs but with a LIMIT (no COUNT(*) of a table).
    for sql in many:
        if "COUNT(" in sql.upper() and "dashboard_run" in sql:
            assert "LIMIT" in sql.upper(), sql
    # A filtered page: its rows through the filter, the rest in one query.
    assert len(_afresh(manager_client, "/runs/?group=finished&page=2")) <= 5


def test_the_other_pages_afresh_make_few_queries(manager_client, buddy_connection):
    _runs(buddy_connection, 0, 60)
    run = Run.objects.order_by("-created_at").first()
    # The data version and the attention strip's counts are one query (every page).
    assert len(_afresh(manager_client, "/environments/")) <= 4
    assert len(_afresh(manager_client, f"/runs/{run.pk}/")) <= 5
    assert len(_afresh(manager_client, "/attention/", **{"HX-Request": "true"})) <= 3
    assert len(_afresh(manager_client, "/releases/")) <= 4
    assert len(_afresh(manager_client, "/trends/?days=30")) <= 4
    _runs(buddy_connection, 60, 3, status=Status.WAITING)  # rows, and their connection
    assert len(_afresh(manager_client, "/inbox/")) <= 5


def test_the_attention_counts_stop_at_99(manager_client, buddy_connection):
    _runs(buddy_connection, 0, 100, status=Status.WAITING)
    page = manager_client.get("/runs/").content.decode()
    assert "<strong>99+</strong> waiting for a person" in page
    assert "<title>(99+) Runs" in page
    assert 'data-total="100"' in page  # still a number, for the favicon
    _runs(buddy_connection, 200, 2, status=Status.FAILED)
    cache.clear()
    strip = manager_client.get("/attention/", headers={"HX-Request": "true"}).content.decode()
    assert "<strong>2</strong> failed in 24 h" in strip


def test_rows_are_written_as_the_row_template_wrote_them(manager_client, buddy_connection):
    _runs(buddy_connection, 0, 1, branch="main", triggered_by='Ana "<b>"')
    run = Run.objects.get()
    body = manager_client.get("/runs/").content.decode()
    row = re.search(r'<tr id="run-\d+".*?</tr>', body, re.S).group(0)
    created = run.created_at.isoformat()
    expected = (
        f'<tr id="run-{run.pk}" data-status="succeeded">'
        '<td><span class="badge status-succeeded" title="succeeded">Succeeded</span></td>'
        f'<td class="name"><a href="/runs/{run.pk}/" class="clip" title="Deploy #0 · main">'
        'Deploy #0</a> <span class="muted clip branch">main</span></td>'
        '<td data-label="Connection"><span class="clip">Buddy</span></td>'
        '<td data-label="Project / pipeline"><span class="clip">Shop / Deploy</span></td>'
        '<td data-label="Environment"><span class="clip">production</span></td>'
        '<td data-label="Version"><code class="clip">1.0</code></td>'
        '<td data-label="By"><span class="clip">Ana &quot;&lt;b&gt;&quot;</span></td>'
        f'<td data-label="Created"><time datetime="{created}" '
        f'title="{run.created_at:%Y-%m-%d %H:%M:%S} UTC" data-relative>'
        f'{run.created_at:%Y-%m-%d %H:%M} UTC</time></td>'
        f'<td data-label="Duration"><span data-duration-from="{created}"></span></td></tr>')
    assert re.sub(r">\n\s*<", "><", row) == expected  # line breaks aside
    # The poll after a change sends the same row, to be swapped in out of band.
    version, key = re.search(r'runs-poller" hx-get="/runs/\?v=([\d.-]+)&amp;p=(\w+)', body).groups()
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now())
    data_changed()
    changed = manager_client.get(f"/runs/?v={version}&p={key}", headers={
        "HX-Request": "true", "HX-Trigger": "runs-poller"}).content.decode()
    assert f'<tr id="run-{run.pk}" data-status="succeeded" hx-swap-oob="true">' in changed


def test_the_filter_form_keeps_its_choices_and_values(manager_client, buddy_connection):
    _runs(buddy_connection, 0, 1)
    env = Run.objects.get().environment
    body = manager_client.get(f"/runs/?environment={env.pk}&by=a%3Cb&group=failed").content
    body = body.decode()
    assert f'<option value="{env.pk}" selected>production</option>' in body
    assert f'<option value="{buddy_connection.pk}">Buddy</option>' in body
    assert '<option value="failed" selected>Failed</option>' in body
    assert '<input type="text" name="by" value="a&lt;b" id="id_by">' in body


def test_a_watched_list_is_one_update_for_all_connections(buddy_connection):
    Connection.objects.create(provider="qovery", name="Q", base_url="http://127.0.0.1:9",
                              token="x", scope={})
    with CaptureQueriesContext(connection) as captured:
        schedule.watching_all()
    assert len(captured) == 1
    assert Connection.objects.filter(watched_until__isnull=False).count() == 2


def test_a_connection_watched_moments_ago_is_not_written_again(manager_client,
                                                               buddy_connection):
    _runs(buddy_connection, 0, 1)
    run = Run.objects.get()
    manager_client.get("/runs/")
    watched = Connection.objects.get().watched_until
    assert watched > timezone.now()
    # Even with the cache's throttle forgotten, no page view writes it again so soon,
    # and the run page does not even ask.
    writes = [sql for sql in _afresh(manager_client, f"/runs/{run.pk}/")
              if sql.startswith("UPDATE")]
    assert writes == []
    _afresh(manager_client, "/runs/")
    assert Connection.objects.get().watched_until == watched
    # Once a third of the window has gone by, a page view watches it again.
    Connection.objects.update(watched_until=timezone.now())
    _afresh(manager_client, f"/runs/{run.pk}/")
    assert Connection.objects.get().watched_until > watched


def test_permissions_are_read_with_one_query(manager, viewer):
    # The statement is prepared once per database connection (the next test): before
    # counting, see that this connection has it, whatever ran before this test.
    User.objects.get(pk=viewer.pk).has_perm("dashboard.act_on_run")
    for user, expected in ((manager, True), (viewer, False)):
        user = User.objects.get(pk=user.pk)  # no permission cache yet
        with CaptureQueriesContext(connection) as captured:
            assert user.has_perm("dashboard.act_on_run") is expected
        assert len(captured) == 1
    admin = User.objects.create_superuser("root", password="x")
    assert admin.has_perm("dashboard.act_on_run")
    viewer.user_permissions.add(*manager.groups.get().permissions.all())
    assert User.objects.get(pk=viewer.pk).has_perm("dashboard.act_on_run")


def test_permissions_are_a_statement_planned_once_per_connection(manager):
    def read():
        with CaptureQueriesContext(connection) as captured:
            assert User.objects.get(pk=manager.pk).has_perm("dashboard.act_on_run")
        return [q["sql"].split()[0] for q in captured.captured_queries[1:]]  # after the user

    first, again = read(), read()
    assert again == ["EXECUTE"], again
    assert first in (["PREPARE", "EXECUTE"], ["EXECUTE"])  # another test may have prepared it


def test_a_superseded_run_page_names_the_current_run_in_few_queries(manager_client):
    qovery = Connection.objects.create(provider="qovery", name="Qovery", token="x", scope={},
                                       base_url="http://127.0.0.1:9")
    _runs(qovery, 0, 3, status=Status.FAILED)  # r0 newest, r2 oldest: same environment
    old, current = Run.objects.get(external_id="r2"), Run.objects.get(external_id="r0")
    queries = _afresh(manager_client, f"/runs/{old.pk}/")
    body = manager_client.get(f"/runs/{old.pk}/").content.decode()
    assert f'<a href="/runs/{current.pk}/">Go to the current run</a>' in body
    assert len(queries) <= 5, queries
    # The newest run is nobody's replacement: no such line on its page.
    newest = manager_client.get(f"/runs/{current.pk}/").content.decode()
    assert "Go to the current run" not in newest


def test_the_run_page_reads_the_run_and_what_it_shows_in_one_prepared_statement(
        manager_client, manager, buddy_connection):
    _runs(buddy_connection, 0, 2)
    bare, busy = Run.objects.get(external_id="r0"), Run.objects.get(external_id="r1")
    Job.objects.bulk_create(Job(run=busy, external_id=f"x{n}", name=f"step {n}", order=n + 1)
                            for n in range(5))
    now = timezone.now()
    ActionRecord.objects.bulk_create(
        ActionRecord(run=busy, user=manager, kind="retry", comment=f"c{n}", state="failed",
                     created_at=now - timedelta(minutes=n)) for n in range(60))
    _runs(buddy_connection, 5, 1, status=Status.WAITING)  # its page asks the token too
    waiting = Run.objects.get(external_id="r5")
    few, many, asks = (_afresh(manager_client, f"/runs/{run.pk}/")
                       for run in (bare, busy, waiting))
    assert len(few) == len(many) == len(asks) <= 5, (many, asks)
    assert [sql.split("(")[0] for sql in many if sql.startswith("EXECUTE runboard_run")] == [
        "EXECUTE runboard_run_page_details"]
    # The live part's poll after a change: the run (what most polls read), then the rest.
    Run.objects.filter(pk=busy.pk).update(updated_at=timezone.now())
    polled = _afresh(manager_client, f"/runs/{busy.pk}/?v=1", **{"HX-Request": "true"})
    assert [sql.split("(")[0] for sql in polled if sql.startswith("EXECUTE runboard_run")] == [
        "EXECUTE runboard_run_page", "EXECUTE runboard_run_details"]
    assert "step 4" in manager_client.get(f"/runs/{busy.pk}/?v=1",
                                          headers={"HX-Request": "true"}).content.decode()
    body = manager_client.get(f"/runs/{busy.pk}/").content.decode()
    # Its steps in order, and its newest 50 audit records, newest first, with who sent them.
    steps = [body.index(name) for name in ("build", *(f"step {n}" for n in range(5)))]
    assert steps == sorted(steps)
    assert body.count(f'<td data-label="Who">{manager.username}</td>') == 50
    assert body.index('wide">c0</td>') < body.index('wide">c49</td>')
    assert 'wide">c50</td>' not in body


def test_the_run_page_reads_the_same_models_the_orm_would(buddy_connection, manager):
    from dashboard import runpage

    def values(obj, only=None):
        return obj and {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields
                        if only is None or f.name in only}

    read = runpage.RELATED[0][2]  # what the page reads of the connection

    _runs(buddy_connection, 0, 2, status=Status.WAITING)  # r0 the newest of its environment
    bare = Run.objects.create(connection=buddy_connection, external_id="bare",
                              raw={"variables": [1]}, locator={"id": 3})
    ActionRecord.objects.create(run=bare, user=manager, kind="approve", options={"x": [1]},
                                response='{"status": "ok"}', state="failed")
    Job.objects.create(run=bare, external_id="j", name="deploy", order=2,
                       environment=Run.objects.get(external_id="r0").environment,
                       started_at=timezone.now(), progress=40)
    for pk in Run.objects.values_list("pk", flat=True):
        ours = runpage.run(pk)
        orm = Run.objects.select_related("connection", "project", "environment").get(pk=pk)
        assert values(ours) == values(orm)
        assert values(ours.connection, read) == values(orm.connection, read)
        assert ours.connection.get_deferred_fields() == {
            f.attname for f in Connection._meta.concrete_fields if f.name not in read}
        assert ours.connection.token == "buddy-test-token"  # decrypted, as the ORM reads it
        assert values(ours.project) == values(orm.project)
        assert values(ours.environment) == values(orm.environment)
        assert ours.last_action == (orm.actions.order_by("-id").values_list("id", flat=True)
                                    .first())
        jobs, history, newest = runpage.details(ours)
        assert [values(j) for j in jobs] == [values(j) for j in orm.jobs.all()]
        assert [j.environment and j.environment.name for j in jobs] == [
            j.environment and j.environment.name for j in orm.jobs.all()]
        assert [values(r) for r in history] == [values(r) for r in orm.actions.all()[:50]]
        assert [str(r.user) for r in history] == [str(r.user) for r in orm.actions.all()]
        there = orm.environment_id and Run.objects.filter(environment=orm.environment_id)
        assert (newest and newest.pk) == (there and there.order_by("-created_at", "-id")[0].pk)
        mark_superseded([orm])
        assert ours.superseded == orm.superseded
    assert runpage.run(10**20) is None and runpage.run(0) is None


@pytest.mark.parametrize("with_run", [True, False])
def test_the_run_page_reads_an_environment_and_a_run_off_their_own_indexes(
        buddy_connection, with_run):
    """A plan made once for every environment must not walk the newest-first index of
    all runs (or all audit records) until it meets this one's: that takes as long as
    there are newer runs elsewhere."""
    from dashboard import runpage

    _runs(buddy_connection, 0, 1)
    run = Run.objects.get()
    _newer_runs_elsewhere(buddy_connection)
    if with_run:  # the page's statement
        sql, params = runpage._run_statement(True)[0], [run.pk]
    else:  # what the poll reads after a change
        sql, params = runpage._details_statement(), [run.pk]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE plan_test AS {numbered(sql)}")
        cursor.execute(f"EXPLAIN EXECUTE plan_test({', '.join(map(str, params))})")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE plan_test")
    for walk in ("run_newest", "actionrecord_created_at", "actionrecord_pkey"):
        assert walk not in plan, plan
    assert plan.count("run_environment_newest") == 2, plan


def test_the_run_page_is_written_as_its_template_wrote_it_and_escapes_what_providers_send(
        manager_client, manager, buddy_connection):
    from datetime import UTC, datetime

    from dashboard.models import Environment, Project

    evil, e = '<b>"x"</b>', "&lt;b&gt;&quot;x&quot;&lt;/b&gt;"
    t = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    project = Project.objects.create(connection=buddy_connection, external_id="p",
                                     name=f"Shop {evil}")
    env = Environment.objects.create(connection=buddy_connection, external_id="e",
                                     name=f"prod {evil}")
    run = Run.objects.create(
        connection=buddy_connection, external_id="r1", status="cancelled",
        raw_status=f"STOPPED {evil}", name=f"Deploy {evil}", project=project, environment=env,
        pipeline_name=f"Deploy {evil}", version=f"1.2 {evil}", branch=f"main {evil}",
        triggered_by=f"Ana {evil}", created_at=t, started_at=t, finished_at=t.replace(minute=3),
        web_url=f"https://ci.example/{evil}", cancelled_by="buddy-bot")
    Job.objects.create(run=run, external_id="j1", name=f"build {evil}", order=1,
                       status="succeeded", raw_status="OK", started_at=t,
                       finished_at=t.replace(minute=1))
    Job.objects.create(run=run, external_id="j2", name=f"deploy {evil}", order=2,
                       status="running", raw_status="RUN", environment=env, started_at=t,
                       progress=40, review_conclusion=f"approved {evil}",
                       reviewed_by=f"Kim {evil}", reviewed_at=t, review_comment=f"go {evil}")
    ActionRecord.objects.create(
        run=run, user=manager, kind="cancel", state="succeeded", comment=f"stop {evil}",
        options={"force_cancel": True}, created_at=t,
        response='{"status": "STOPPED", "normalized": "cancelled"}')
    body = manager_client.get(f"/runs/{run.pk}/").content.decode()
    assert "<b>" not in body
    when = ('<time datetime="2026-03-01T12:00:05+00:00" title="2026-03-01 12:00:05 UTC" '
            "data-relative>2026-03-01 12:00 UTC</time>")
    # What templates/runs/_live.html wrote with its lookups, line breaks and all.
    header = f"""  <header class="run-header">
    <h1>Deploy {e}
      <span class="badge status-cancelled" title="STOPPED {e}">Cancelled</span></h1>
    <dl class="facts">
      <dt>Provider</dt><dd>Buddy.works · Buddy</dd>
      <dt>Project</dt><dd>Shop {e}</dd>
      <dt>Pipeline</dt><dd>Deploy {e}</dd>
      <dt>Environment</dt><dd>prod {e}</dd>
      <dt>Version</dt><dd><code>1.2 {e}</code></dd>
      <dt>Branch</dt><dd>main {e}</dd>
      <dt>Triggered by</dt><dd>Ana {e}</dd>
      <dt>Created</dt><dd>{when}</dd>
      <dt>Started</dt><dd>{when}</dd>
      <dt>Finished</dt><dd>{when.replace("12:00", "12:03")}</dd>
      <dt>Duration</dt><dd class="run-duration">3m 0s</dd>
      <dt>Provider status</dt><dd><code>STOPPED {e}</code></dd>
      <dt>Cancelled</dt><dd class="cancelled-by">manager from Runboard (forced): stop {e}</dd>
      \n      <dt>Link</dt><dd><a href="https://ci.example/{e}" rel="noopener noreferrer" \
target="_blank">Open in Buddy.works</a></dd>
    </dl>
  </header>
"""
    steps = f"""  <ol class="jobs">
    \n      <li><span class="badge status-succeeded" title="OK">Succeeded</span>
        build {e}
        <span class="muted step-time">1m 0s</span>
        \n        \n      </li>
    \n      <li><span class="badge status-running" title="RUN">Running</span>
        deploy {e} · prod {e}
        <span class="muted step-time"><span data-duration-from="2026-03-01T12:00:05+00:00">\
</span> so far</span>
        <progress max="100" value="40"></progress>
        <span class="muted">— approved {e} by Kim {e} {when}: “go {e}”</span>
      </li>
    \n  </ol>
"""
    history = f"""    <tbody>
    \n      <tr><td data-label="When">{when}</td><td data-label="Who">manager</td>
        <td data-label="Action">Cancel (force)</td><td data-label="Comment" class="wide">\
stop {e}</td>
        <td data-label="Result" class="state-succeeded">Succeeded</td><td \
data-label="Provider's answer" class="muted wide">Run is now cancelled (provider status \
STOPPED)</td></tr>
    \n    </tbody>
"""
    for part in (header, steps, history):
        assert part in body, part


def test_the_releases_matrix_environment_board_and_trends_escape_what_providers_send(
        manager_client, buddy_connection):
    evil = '<b>"x"</b>'
    project = ProjectData("p1", f"Shop {evil}")
    env = EnvironmentData("e1", f"production {evil}", project)
    now = timezone.now()
    sync.upsert_runs(buddy_connection, [  # one running, one deployed: both in the cell
        RunData(external_id=f"r{n}", status=status, raw_status=status.value, locator={},
                name=f"Deploy {evil}", version=f"1.{n} {evil}", project=project,
                environment=env, pipeline_name=f"Deploy {evil}",
                created_at=now - timedelta(minutes=n), started_at=now - timedelta(minutes=n),
                jobs=[JobData("j1", "build", status, status.value)])
        for n, status in ((0, Status.RUNNING), (1, Status.SUCCEEDED))])
    for path in ("/releases/", "/releases/?q=1.1", "/environments/", "/trends/"):
        body = manager_client.get(path).content.decode()
        assert "<b>" not in body, path
        assert body.count("&lt;b&gt;&quot;x&quot;&lt;/b&gt;") >= 3, path
    body = manager_client.get("/releases/?q=1.1").content.decode()
    assert 'class="cell hit"' in body and '<span class="now">' in body


@pytest.mark.django_db(transaction=True)  # it closes the connection
def test_the_data_version_is_a_statement_planned_once_per_connection(buddy_connection):
    from dashboard.models import data_version

    def read():
        cache.clear()
        with CaptureQueriesContext(connection) as captured:
            version = data_version()
        return version, [q["sql"] for q in captured.captured_queries]

    first, _ = read()
    again, sql = read()
    assert again == first
    assert len(sql) == 1 and sql[0].startswith("EXECUTE runboard_version("), sql
    # A new connection has no prepared statements: it prepares its own.
    _runs(buddy_connection, 0, 1, status=Status.WAITING)
    connection.close()
    changed, sql = read()
    assert changed != first
    assert [s.split()[0] for s in sql] == ["PREPARE", "EXECUTE"], sql


def test_a_route_is_the_url_tags_url_under_each_script_prefix():
    from django.template import Context, Template
    from django.urls import set_script_prefix

    both = Template("{% load runboard %}{% route 'run-list' %} {% url 'run-list' %} "
                    "{% route 'admin:index' %} {% url 'admin:index' %}")
    try:
        for prefix in ("/", "/runboard/", "/a&b/"):
            set_script_prefix(prefix)
            route, url, admin_route, admin_url = both.render(Context()).split()
            assert route == url and admin_route == admin_url, (prefix, route, url)
            assert route.startswith(prefix.replace("&", "&amp;")), route
    finally:
        set_script_prefix("/")


def test_an_asset_is_the_static_tags_url_and_follows_a_new_static_url(settings):
    from django.template import Context, Template

    both = Template("{% load runboard static %}"
                    "{% asset 'runboard.css' %} {% static 'runboard.css' %}")
    asset, static = both.render(Context()).split()
    assert asset == static
    settings.STATIC_URL = "/assets/"
    asset, static = both.render(Context()).split()
    assert asset == static and asset.startswith("/assets/"), asset


def test_the_unfiltered_list_reuses_one_filter_form_that_a_filtered_one_never_touches(
        manager_client, buddy_connection):
    _runs(buddy_connection, 0, 3)
    first = manager_client.get("/runs/").context["filter"]
    filtered = manager_client.get("/runs/?group=failed&q=Deploy")
    assert filtered.context["filter"] is not first
    assert 'value="Deploy"' in filtered.content.decode()
    cache.clear()
    again = manager_client.get("/runs/")
    assert again.context["filter"] is first  # made once per process, not per request
    html = again.content.decode()
    assert '<option value="" selected>Any status</option>' in html
    assert 'value="Deploy"' not in html and "No runs match" not in html


def test_the_run_lists_poller_warns_of_a_stale_connection_with_its_error_escaped(
        manager_client, buddy_connection):
    _runs(buddy_connection, 0, 1)
    now = timezone.now()
    Connection.objects.filter(pk=buddy_connection.pk).update(
        last_success_at=now - timedelta(days=2), last_error='<b>"x"</b>', last_error_at=now,
        next_attempt_at=now + timedelta(minutes=5))
    data_changed()
    for headers in ({}, {"HX-Request": "true"}):
        cache.clear()
        body = manager_client.get("/runs/", headers=headers).content.decode()
        poller = body[body.index('<div id="runs-poller"'):body.index('<table class="runs">')]
        assert "<strong>Buddy</strong> is not syncing: &lt;b&gt;&quot;x&quot;&lt;/b&gt;." in poller
        assert "<b>" not in poller
        assert poller.count("<time ") == 3  # last success, next attempt, last sync


def test_the_lists_times_are_isoformats_whatever_their_fraction(manager_client,
                                                                buddy_connection):
    """The first page's times come as PostgreSQL's text (trailing zeros of the fraction
    dropped, none for whole seconds): written out, they are datetime.isoformat()'s."""
    base = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    for n, micro in enumerate((0, 120000, 1)):
        _runs(buddy_connection, n, 1)
        moment = base + timedelta(minutes=n, microseconds=micro)
        Run.objects.filter(external_id=f"r{n}").update(
            created_at=moment, started_at=moment, finished_at=moment + timedelta(seconds=90))
    data_changed()
    cache.clear()
    body = manager_client.get("/runs/").content.decode()
    for run in Run.objects.all():
        created, finished = run.created_at.isoformat(), run.finished_at.isoformat()
        assert (f'<time datetime="{created}" title="{run.created_at:%Y-%m-%d %H:%M:%S} UTC" '
                f'data-relative>{run.created_at:%Y-%m-%d %H:%M} UTC</time>') in body
        assert (f'<span data-duration-from="{created}" data-duration-to="{finished}">'
                in body)


def test_the_unfiltered_filter_form_shows_a_renamed_or_new_choice_at_once(manager_client,
                                                                         buddy_connection):
    """Its fields are kept per model choices (runrows.unfiltered_fields_html): a change
    of the choices is a new key, not a stale form."""
    _runs(buddy_connection, 0, 1)
    run = Run.objects.get()
    assert '>Shop</option>' in manager_client.get("/runs/").content.decode()
    run.project.name = 'Shop <b>"2"</b>'
    run.project.save()
    buddy_connection.name = "Buddy EU"
    buddy_connection.save()
    cache.clear()
    body = manager_client.get("/runs/").content.decode()
    renamed = "Shop &lt;b&gt;&quot;2&quot;&lt;/b&gt;"
    assert f'<option value="{run.project.pk}">{renamed}</option>' in body
    assert f'<option value="{buddy_connection.pk}">Buddy EU</option>' in body
    assert ">Shop</option>" not in body


def test_the_list_written_in_python_escapes_what_the_url_and_providers_send(
        manager_client, buddy_connection):
    """runrows.page_html, table_html and pager_html: the search, the filters and the
    pager's links carry what the URL asked, escaped; so are the rows and the poller."""
    evil = '<b>"x"</b>'
    _runs(buddy_connection, 0, 3, branch=evil, triggered_by=evil)
    cache.clear()
    for path in ("/runs/?q=%3Cb%3E%22x%22%3C%2Fb%3E&by=%3Cb%3E&page=2",
                 "/runs/?pipeline=%22%3E%3Cb%3E&page=2", "/runs/"):
        for headers in ({}, {"HX-Request": "true"}):
            body = manager_client.get(path, headers=headers).content.decode()
            assert "<b>" not in body, (path, headers)
            if "page=2" in path:
                assert 'rel="prev">' in body and "&amp;page=1" in body
    body = manager_client.get("/runs/?q=%3Cb%3E%22x%22%3C%2Fb%3E").content.decode()
    assert 'value="&lt;b&gt;&quot;x&quot;&lt;/b&gt;"' in body
    assert body.count('<tr id="run-') == 3  # their branch matches
    assert manager_client.get("/runs/").content.decode().count("&lt;b&gt;&quot;x&quot;") >= 6


def test_the_environment_board_reads_each_environment_off_its_own_index(buddy_connection):
    """The board's plan serves every environment: with newer runs elsewhere it must not
    walk the newest-first index of all runs until it meets a quiet environment's (that
    took 110-200 ms at 100,000 runs for an environment unused since)."""
    from dashboard.models import Environment

    _runs(buddy_connection, 0, 1)
    _newer_runs_elsewhere(buddy_connection)
    with connection.cursor() as cursor:
        sql, params = Environment.objects.board_sql()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "run_newest" not in plan, plan
    assert plan.count("run_environment_newest") == 2, plan
    quiet, busy_row = sorted(Environment.objects.board(), key=lambda row: row[1] == "busy")
    assert quiet[8] == "1.0" and quiet[12] == "1.0"  # its latest and deployed run
    assert busy_row[11] == "" and busy_row[4] is not None


def test_times_are_labelled_with_the_zone_they_are_shown_in(settings):
    """Times are shown in TIME_ZONE; they were labelled "UTC" whatever it was."""
    from datetime import UTC, datetime

    from django.template import Context, Template
    from django.utils import timezone

    from dashboard.runrows import time_html

    moment = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    settings.TIME_ZONE = "Europe/Berlin"
    with timezone.override("Europe/Berlin"):
        written = time_html(moment)
        rendered = Template('{% include "partials/time.html" %}').render(
            Context({"value": moment})).rstrip("\n")
    expected = ('<time datetime="2026-03-01T13:00:05+01:00" title="2026-03-01 13:00:05 CET" '
                "data-relative>2026-03-01 13:00 CET</time>")
    assert written == rendered == expected
    with timezone.override("UTC"):
        assert time_html(moment).endswith("2026-03-01 12:00 UTC</time>")
