#!/usr/bin/env bash
# Set everything up and run the test suite (the parity tests read tests/data/oracle; the tests that
# read real audio from ../shared/devdata skip without it).
# The test files run on BEATS_TEST_WORKERS processes at once (default: the CPU cores, at most 4; 1 runs
# them in this process): most tests run single-threaded subprocesses, so one process leaves cores idle.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
WORKERS=${BEATS_TEST_WORKERS:-$(.venv/bin/python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
PARALLEL=()
[ "$WORKERS" -le 1 ] || PARALLEL=(-n "$WORKERS" --dist loadfile)
exec .venv/bin/python -m pytest tests -ra --durations=25 "${PARALLEL[@]}" "$@"
