#!/usr/bin/env bash
# The whole test suite: lint, types, import layers, then pytest (ROS message tests over real DDS included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/env.sh
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== import contracts"; lint-imports --no-cache
echo "== pytest"; pytest "$@"
