# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test lint bench screenshots

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Everything on an embedded default: SQLite and a filesystem broker under ./var/.
demo: $(PY)
	$(PY) -m pip install -q -e .
	DEBUG=true $(PY) manage.py demo

# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see README).
# Two pytest-xdist workers, one per core of the 2-core machines CI and developers have;
# each gets its own test database. A number, not `auto`: every machine runs the suite as
# CI does, with the timing checks (a change on an open page within a second) as loaded
# as they were proven at. PYTEST_WORKERS=0 runs it in one process (for --pdb).
PYTEST_WORKERS ?= 2
test: $(PY)
	$(PY) -m pip install -q -e ".[test]"
	npm ci --prefix tests/oidc --no-audit --no-fund --silent
	$(PY) -m ruff check .
	$(PY) manage.py makemigrations --check --dry-run --settings=dashboard.settings_test >/dev/null
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(PY)
	$(PY) -m ruff check .

# Figures for the sync and the pages (needs PostgreSQL like the tests; see README).
bench: $(PY)
	$(PY) -m pip install -q -e .
	$(PY) bench/sync.py
	$(PY) bench/pages.py

# Every page at 1366x900 and 390x844, light and dark, into var/screenshots/ (needs
# PostgreSQL like the tests, and Debian's chromium).
screenshots: $(PY)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) tools/screenshots.py
