# The README's commands (dev, test; smoke). Each installs what it needs first (scripts/install.sh).
.PHONY: install dev smoke test lint bench

install:
	./scripts/install.sh

dev: install
	.venv/bin/llmspawner dev

smoke: install
	.venv/bin/llmspawner dev --smoke

test: install
	.venv/bin/pytest

lint: install
	.venv/bin/ruff check .

# Every benchmark (benchmarks/run_all.py: at most ~18 min on 2 cores, each benchmark stopped at its time budget); ends with one 'ratio NAME VALUE target TARGET' line per figure and bench_total_seconds.
bench: install
	.venv/bin/python benchmarks/run_all.py
