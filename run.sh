#!/usr/bin/env bash
# The main job: install what is missing, then show podnet working (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/podnet demo "$@"
