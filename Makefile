# Two commands matter: `make demo` (set up, then run the main job) and `make test`.
# Everything runs inside the venv made by scripts/setup.sh (idempotent, fast when done).
SHELL := /bin/bash
.PHONY: setup test lint demo bench clean

setup:
	bash scripts/setup.sh

test: setup
	bash scripts/test.sh

lint: setup
	source scripts/env.sh && ruff check . && ruff format --check . && mypy && lint-imports --no-cache

demo: setup
	source scripts/env.sh && dlgpr demo

bench: setup
	source scripts/env.sh && python benchmarks/bench_map.py && python benchmarks/bench_dialogue.py

clean:
	rm -rf build install log .mypy_cache .ruff_cache .pytest_cache
