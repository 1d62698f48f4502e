# Fieldpass developer entry points. Two commands do all the set-up on a fresh machine:
#   make demo   HQ and a simulated device, end to end, on embedded defaults (SQLite)
#   make test   system packages, virtualenv, ruff, mypy and the whole pytest suite
# and the slow real checks CI runs after it (root):
#   make yocto-parse   meta-fieldpass under a real bitbake, offline, per series
#   make boot-test     a real systemd boot of the gate in systemd-nspawn; sysvinit scripts
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: all venv install sysdeps lint test fuzz yocto-parse boot-test demo bench vectors clean

all: test

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '.[hq,test]'
	touch $@

venv: $(VENV)/.deps

# A real (non-editable) install, so that tests and benchmarks run the same
# console scripts an image would ship, with precompiled .pyc files.
install: venv
	$(PY) -m pip install -q --no-deps --force-reinstall .

sysdeps:
	./scripts/install-test-deps

lint: venv
	$(BIN)/ruff check agent provisioning tests
	$(BIN)/ruff format --check agent provisioning tests
	$(BIN)/mypy

# Two workers (pytest-xdist), each file on one worker: the suite mostly waits on real
# brokers, servers and clocks. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: sysdeps install lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The fuzz passes of `make test` run on a fixed seed (the suite tests/fuzz/ about 40 s,
# schemathesis over the HQ HTTP API about 30 s); here with twenty times the examples
# and random seeds (tests/fuzz/conftest.py; tests/hq/test_schemathesis.py names its seed
# in a failure).
fuzz: sysdeps install
	FIELDPASS_FUZZ=long $(PY) -m pytest -q -p no:cacheprovider tests/fuzz tests/hq/test_schemathesis.py

# Not part of `make test`: a real bitbake parse and dry run of meta-fieldpass for each
# series (tests/firmware/real_bitbake.py; about 15 minutes on 2 cores, root).
yocto-parse: install
	./scripts/install-test-deps .ci/apt-packages-yocto.txt
	$(PY) -m pytest -q -p no:cacheprovider tests/firmware/real_bitbake.py

# Not part of `make test`: systemd-nspawn boots of a debootstrap root and the sysvinit
# scripts under two start-stop-daemons (tests/firmware/real_boot.py, real_sysvinit.py;
# a few minutes, root).
boot-test: install
	./scripts/install-test-deps .ci/apt-packages-boot.txt
	$(PY) -m pytest -q -p no:cacheprovider tests/firmware/real_sysvinit.py tests/firmware/real_boot.py

demo: sysdeps install
	./scripts/demo

bench: sysdeps install
	$(PY) -m tests.bench.run

vectors: venv
	$(PY) -m tests.vectors.generate

clean:
	rm -rf $(VENV) build *.egg-info demo-run bench-out
