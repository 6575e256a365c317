# Two entry points: `make demo` (the main job) and `make test`.
# Both create or refresh the virtualenv in .venv from setup.cfg.
# Tests run in two worker processes, one test file each at a time (pytest-xdist,
# --dist loadfile keeps a module's devnet fixture in one worker): most of the
# suite's wall time is real nodes waiting on timers, not CPU.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test venv bench clean

$(BIN)/.stamp: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.stamp

demo: venv
	$(BIN)/python -m xcore.demo

test: venv
	$(BIN)/python -m mypy --ignore-missing-imports xcore sims cli.py
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info
