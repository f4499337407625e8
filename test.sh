#!/usr/bin/env bash
# The test job: install what is missing, lint, check the import layers, run the tests.
#   ./test.sh [PYTEST ARGS]          every test (the CI command, .ci/run)
#   ./test.sh --quick [PYTEST ARGS]  the fast tier: no lab and no slow test (-m "not lab and not slow"),
#                                    spread over the machine's cores (pytest-xdist, -n auto)
set -euo pipefail
cd "$(dirname "$0")"
tier=()
if [ "${1:-}" = "--quick" ]; then
  shift
  tier=(-m "not lab and not slow" -n auto)
fi
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check src tests; ruff format --check src tests
echo "== import layers"; lint-imports
echo "== pytest"
set +e
python -m pytest "${tier[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
