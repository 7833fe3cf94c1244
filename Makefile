# Two commands do everything on a fresh machine:
#   make demo   - create .venv, install (torch==2.13.0 first), run the NVE demo
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test bench clean

$(BIN)/ipi-nc: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/ipi-nc

install: $(BIN)/ipi-nc

demo: install
	$(BIN)/ipi-nc demo --out demo-out

test: install
	$(BIN)/python -m pytest -q --durations=15 tests

bench: install
	$(BIN)/ipi-nc bench --out bench-out

clean:
	rm -rf $(VENV) demo-out bench-out runs
