# Install, lint, test and benchmark InferenceServer. `make test` is the README's test command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test bench up down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Starts its own RabbitMQ and PostgreSQL containers unless RABBITMQ_URL / DATABASE_URL are given.
test: install
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

up:
	docker compose up -d

down:
	docker compose down
