# The two commands a new user needs are `make run` and `make test`; both
# install into .venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find proto/orchestra -name '*.proto' | sort)

.PHONY: install run test soak gen lint bench clean release-proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/orchestra up --demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Heavier reliability runs than make test: more kill -9 cycles, more fuzz cases, longer property runs.
soak: $(STAMP)
	ORCHESTRA_CRASH_CYCLES=20 ORCHESTRA_FUZZ_EXAMPLES=1000 ORCHESTRA_FAULT_CYCLES=$${ORCHESTRA_FAULT_CYCLES:-10} \
		$(BIN)/python -m pytest \
		tests/integration/test_crash_safety.py tests/contract/test_fuzz.py tests/integration/test_races.py \
		tests/integration/test_storage_faults.py
	# The token flood, longer and wider: 300 connections for 60 s, loopback only.
	ORCHESTRA_FLOOD_SECONDS=60 ORCHESTRA_FLOOD_CONNECTIONS=300 $(BIN)/python -m pytest \
		tests/contract/test_token_flood.py

# Regenerates gen/ from proto/ with local tools only.
gen: $(STAMP)
	$(BIN)/python -m orchestra_server.codegen

# At a release: record the released proto, the baseline `buf breaking` compares against.
release-proto: $(STAMP)
	$(BIN)/buf build --exclude-source-info -o contract/orchestra-v1.proto-image.json
	$(BIN)/python -c "import json, pathlib; p = pathlib.Path('contract/orchestra-v1.proto-image.json'); \
		p.write_text(json.dumps(json.loads(p.read_text()), indent=1, sort_keys=True) + '\\n')"

lint: $(STAMP)
	$(BIN)/ruff check orchestra_server tests
	$(BIN)/ruff format --check orchestra_server tests
	$(BIN)/mypy --strict orchestra_server
	$(BIN)/lint-imports --no-cache
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# Load benchmarks of the real stack (not part of `make test`); BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
