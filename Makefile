# The two commands of the README. Each sets up .venv (torch CPU build first), the
# package and the dataset when missing, then runs.
.PHONY: setup demo test test-slow bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/nnshrink demo $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)

test-slow: setup
	.venv/bin/python -m pytest -q -m slow $(ARGS)
