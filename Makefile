# Two commands: `make run` serves the product, `make test` checks it. Each sets itself up.
SHELL := /bin/bash
PORT ?= 8000
# uv may be missing, or (under pyenv) installed for another Python only.
UV := $(shell uv --version >/dev/null 2>&1 && echo uv || echo "python3 -m uv")

# `make test` runs against real Postgres and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/mcpgw
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install run test lint services node-tools system-tools bench

install:
	@uv --version >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

run: install
	@$(UV) run python manage.py migrate --noinput -v0
	@$(UV) run python manage.py ensure_admin
	@$(UV) run python manage.py audit_reconcile
	@echo "Console and gateway on http://127.0.0.1:$(PORT)/ (agents: http://127.0.0.1:$(PORT)/mcp/<slug>)"
	@$(UV) run python -m mcpgw.serve --host 127.0.0.1 --port $(PORT)

services:
	@bash tests/support/ensure_services.sh

node-tools:
	@bash tests/support/install_node_tools.sh

system-tools:
	@bash tests/support/install_system_tools.sh

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .

test: install services node-tools system-tools lint
	@# Models against migrations: a database in memory, so no server need hold one yet.
	DATABASE_URL=sqlite://:memory: $(UV) run python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(UV) run pytest $(PYTEST_ARGS)
