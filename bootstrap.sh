#!/usr/bin/env bash
# Set up (once) and run berg-scale from a fresh clone.
#   ./bootstrap.sh demo [ARGS...]   run the demo: synthetic BERG root + synthetic shards -> responses -> RNC
#   ./bootstrap.sh test [ARGS...]   run the full test suite (starts a loopback SeaweedFS S3 server itself)
#   ./bootstrap.sh typecheck        type-check the package with mypy (settings in pyproject.toml)
# The virtualenv lives in .venv (override with BERG_SCALE_VENV); dependencies are pinned by
# requirements/constraints.txt so every machine resolves the same versions.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${BERG_SCALE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.berg-scale-installed"
FINGERPRINT="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating virtualenv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$FINGERPRINT" ]; then
  echo "[bootstrap] installing berg-scale and its dependencies (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
  echo "$FINGERPRINT" > "$STAMP"
fi

# Subprocesses (Ray job drivers, workers, CLI calls in tests) must find this venv first.
export VIRTUAL_ENV="$(cd "$VENV" && pwd)"
export PATH="$VIRTUAL_ENV/bin:$PATH"

# Loopback only: no cloud metadata lookups, no usage reporting, Ray bound to 127.0.0.1.
export AWS_EC2_METADATA_DISABLED=true
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

command="${1:-}"
shift || true
case "$command" in
  demo)
    exec berg-scale demo "$@"
    ;;
  test)
    set +e
    python -m pytest "$@"
    status=$?
    set -e
    if [ "$status" -eq 5 ]; then
      echo "[bootstrap] pytest collected no tests: failing" >&2
      exit 1
    fi
    exit "$status"
    ;;
  typecheck)
    exec python -m mypy berg_scale
    ;;
  *)
    echo "usage: ./bootstrap.sh demo [--out DIR] | ./bootstrap.sh test [PYTEST ARGS] | ./bootstrap.sh typecheck" >&2
    exit 2
    ;;
esac
