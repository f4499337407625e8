#!/usr/bin/env bash
# The test job: install what is missing, lint, check the import layers, run the tests.
#   ./test.sh [PYTEST ARGS]          every test (the CI command, .ci/run): the tests without a lab
#                                    spread over the cores (pytest-xdist), then the lab tests one
#                                    at a time (they measure and compare kernel state)
#   ./test.sh --quick [PYTEST ARGS]  the fast tier: no lab and no slow test (-m "not lab and not slow"),
#                                    spread over the cores
# With -m in PYTEST ARGS the selection is yours: one pytest run, nothing added.
set -euo pipefail
cd "$(dirname "$0")"
quick=0
if [ "${1:-}" = "--quick" ]; then
  shift
  quick=1
fi
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check src tests; ruff format --check src tests
echo "== import layers"; lint-imports

# pytest's exit status, with 5 (no test collected) as "ran nothing"
pytest_phase() {
  set +e
  python -m pytest "$@"
  local rc=$?
  set -e
  return "$rc"
}

own_selection=0
for arg in "$@"; do [ "$arg" = "-m" ] && own_selection=1; done
rcs=()
if [ "$quick" -eq 1 ]; then
  echo "== pytest (quick tier)"
  pytest_phase -m "not lab and not slow" -n auto "$@" && rcs+=(0) || rcs+=($?)
elif [ "$own_selection" -eq 1 ]; then
  echo "== pytest"
  pytest_phase "$@" && rcs+=(0) || rcs+=($?)
else
  echo "== pytest: tests without a lab, on every core"
  pytest_phase -m "not lab" -n auto "$@" && rcs+=(0) || rcs+=($?)
  echo "== pytest: lab tests, one at a time"
  pytest_phase -m lab "$@" && rcs+=(0) || rcs+=($?)
fi
ran=0
failed=0
for rc in "${rcs[@]}"; do
  [ "$rc" -eq 0 ] && ran=1
  [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && failed=$rc
done
if [ "$failed" -ne 0 ]; then
  exit "$failed"
fi
if [ "$ran" -eq 0 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
