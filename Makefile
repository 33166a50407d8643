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
test: $(PY)
	$(PY) -m pip install -q -e ".[test]"
	npm ci --prefix tests/oidc --no-audit --no-fund --silent
	$(PY) -m ruff check .
	$(PY) manage.py makemigrations --check --dry-run --settings=dashboard.settings_test >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

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
