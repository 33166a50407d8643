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
from dashboard.models import Connection, Run, data_changed
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
    assert len(_afresh(manager_client, f"/runs/{run.pk}/")) <= 7
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
    for user, expected in ((manager, True), (viewer, False)):
        user = User.objects.get(pk=user.pk)  # no permission cache yet
        with CaptureQueriesContext(connection) as captured:
            assert user.has_perm("dashboard.act_on_run") is expected
        assert len(captured) == 1
    admin = User.objects.create_superuser("root", password="x")
    assert admin.has_perm("dashboard.act_on_run")
    viewer.user_permissions.add(*manager.groups.get().permissions.all())
    assert User.objects.get(pk=viewer.pk).has_perm("dashboard.act_on_run")


def test_a_superseded_run_page_names_the_current_run_in_few_queries(manager_client):
    qovery = Connection.objects.create(provider="qovery", name="Qovery", token="x", scope={},
                                       base_url="http://127.0.0.1:9")
    _runs(qovery, 0, 3, status=Status.FAILED)  # r0 newest, r2 oldest: same environment
    old, current = Run.objects.get(external_id="r2"), Run.objects.get(external_id="r0")
    queries = _afresh(manager_client, f"/runs/{old.pk}/")
    body = manager_client.get(f"/runs/{old.pk}/").content.decode()
    assert f'<a href="/runs/{current.pk}/">Go to the current run</a>' in body
    assert len(queries) <= 8, queries
    # The newest run is nobody's replacement: no such line on its page.
    newest = manager_client.get(f"/runs/{current.pk}/").content.decode()
    assert "Go to the current run" not in newest


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
