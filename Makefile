# Install, lint, test and benchmark InferenceServer. `make test` is the README's test command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test bench up down swarm-network constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml or constraints.txt changed since the last install (or the venv is new).
# The versions are constraints.txt's: what the images install too.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# After changing pyproject.toml: the newest versions its ranges allow, tested by `make test`, become constraints.txt.
constraints: | $(BIN)/python
	$(BIN)/pip install -q -U -e '.[dev]'
	@{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt
	touch $(VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Starts its own RabbitMQ and PostgreSQL containers unless RABBITMQ_URL / DATABASE_URL are given.
# pytest's exit code 5 (no tests collected) fails too: a test run that ran nothing proves nothing.
test: install
	@rc=0; $(BIN)/python -m pytest -ra $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests, which is a failure" >&2; fi; \
	exit $$rc

bench: install
	$(BIN)/python -m bench

# The whole service on this host: .env with fresh secrets and a self-signed certificate when missing (never
# replaced), images built, every container healthy. Run again, it changes nothing and keeps the data.
up:
	@scripts/setup env
	@scripts/setup cert
	docker compose up -d --build --wait --wait-timeout 300
	@scripts/setup url

# Stops the service; the data stays in its volumes.
down:
	docker compose down

# The swarm overlay GPU hosts join (docs/operations.md): attachable, internal (no route out), encrypted between hosts.
INTERNAL_NETWORK ?= inference-internal
swarm-network:
	@docker network inspect $(INTERNAL_NETWORK) >/dev/null 2>&1 && echo "network $(INTERNAL_NETWORK) exists" || \
	docker network create -d overlay --attachable --internal --opt encrypted $(INTERNAL_NETWORK)
