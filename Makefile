# The README's commands (dev, test; smoke). Each installs what it needs first (scripts/install.sh).
.PHONY: install dev smoke test lint

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
