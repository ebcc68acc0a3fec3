#!/usr/bin/env bash
# Set everything up and run the test suite (the parity tests read tests/data/oracle; the tests that
# read real audio from ../shared/devdata skip without it).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests -ra --durations=25 "$@"
