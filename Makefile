# Install, lint, test and benchmark InferenceServer. `make test` is the README's test command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test bench up down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changed since the last install (or the venv is new).
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

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

up:
	docker compose up -d

down:
	docker compose down
