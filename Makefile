# Refinery: `make demo` runs the platform on the embedded default (SQLite, no services);
# `make test` runs the whole test suite (PostgreSQL lane, then the SQLite lane).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_URL ?= postgres://postgres@127.0.0.1:5432/refinery
SQLITE_TEST_URL ?= sqlite:///var/test.sqlite3
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install services demo test test-postgres test-sqlite lint bench-queue bench-request bench-engine bench-round clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0: a looser pin would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet -r requirements.lock
	mkdir -p var
	touch $@

# The demo's own random key, made once and kept in var/ (never committed).
var/secret_key:
	mkdir -p var
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# The demo runs as deployed (DEBUG off, static files hashed and served by WhiteNoise), on loopback:
# `manage.py demo` sets up the loop's demo project and runs the web server and one Celery worker
# (filesystem broker, queues default and gpu) until Ctrl+C stops both.
demo: install var/secret_key
	export SECRET_KEY="$$(cat var/secret_key)" DEBUG=0 && \
	$(BIN)/python manage.py migrate --no-input && \
	$(BIN)/python manage.py collectstatic --no-input -v 0 && \
	$(BIN)/python manage.py demo --host $(HOST) --port $(PORT)

# PostgreSQL, Redis and chromium for the tests: started or installed where possible, else a clear stop.
services:
	PG_URL=$(PG_URL) scripts/test-services

# Management commands need no secrets here: DEBUG=1 lets them use the development key.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DEBUG=1 DATABASE_URL=$(SQLITE_TEST_URL) $(BIN)/python manage.py makemigrations --check --dry-run
	DEBUG=1 DATABASE_URL=$(SQLITE_TEST_URL) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file var/schema.yml

# pytest exits 5 when it collected nothing: for this project that is a failure, not a pass.
define run_pytest
	$(BIN)/pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests in: $(1)"; exit 1; fi; exit $$rc
endef

test-postgres: install services
	DATABASE_URL=$(PG_URL) $(call run_pytest,-p no:cacheprovider tests)

test-sqlite: install
	mkdir -p var
	DATABASE_URL=$(SQLITE_TEST_URL) $(call run_pytest,-p no:cacheprovider tests --ignore=tests/engine -m "not browser")

test: services lint test-postgres test-sqlite

bench-queue: install
	$(BIN)/python bench/queue.py

bench-request: install
	$(BIN)/python bench/request_cpu.py

bench-engine: install
	$(BIN)/python bench/engine.py

# A round on the tiny model against the engine alone (SQLite; PG_URL-style --database-url for PostgreSQL).
bench-round: install
	$(BIN)/python bench/round.py

clean:
	rm -rf var .pytest_cache .ruff_cache
