"""The embedded default answers every page: `make demo` runs on SQLite, where SQL
written for PostgreSQL (json_agg, LATERAL, PREPARE, arrays) does not run.

Every page, its htmx polls, a run page of each provider and an action are asked in a
process of its own on an SQLite file (`tests/sqlite_sweep.py`), as a release manager
and as a viewer, each page rendered afresh."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_page_answers_on_sqlite(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'runboard.sqlite3'}",
           "DJANGO_SETTINGS_MODULE": "dashboard.settings_test",
           "RUNBOARD_VAR_DIR": str(tmp_path)}
    env.pop("CACHE_URL", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sqlite_sweep.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {asked: status for asked, status in answers.items()
              if status >= 500 or status in (400, 404, 405)}
    assert failed == {}, (failed, done.stderr[-4000:])
    # The sweep reached what it meant to: both users, a run page of every provider,
    # and the manager's cancel went through while the viewer's was refused.
    assert sum(asked.startswith("manager GET /runs/") for asked in answers) >= 4 * 3
    assert answers["manager POST cancel"] in (200, 302)
    assert answers["viewer POST cancel"] == 403
