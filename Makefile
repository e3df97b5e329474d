# The two commands a new user needs are `make run` and `make test`; both
# install into .venv first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find proto/orchestra -name '*.proto' | sort)
# The web console's one npm dependency (the diagram layout), copied beside its modules.
CONSOLE := orchestra_server/console
CONSOLE_STAMP := $(CONSOLE)/vendor/.installed
DAGRE_DIST := $(CONSOLE)/node_modules/@dagrejs/dagre/dist
# puppeteer-core, which drives Firefox ESR for the console's Firefox test (tests only).
FIREFOX_CHECKS := tests/console/firefox
FIREFOX_CHECKS_STAMP := $(FIREFOX_CHECKS)/node_modules/.installed

.PHONY: install run test soak gen lint bench clean release-proto browser screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CONSOLE_STAMP): $(CONSOLE)/package-lock.json $(CONSOLE)/package.json
	cd $(CONSOLE) && npm ci --no-audit --no-fund --silent
	mkdir -p $(CONSOLE)/vendor
	# Without the source map comment: the map is not served.
	sed '/^\/\/# sourceMappingURL=/d' $(DAGRE_DIST)/dagre.esm.js > $(CONSOLE)/vendor/dagre.js
	cp $(DAGRE_DIST)/dagre.esm.js.LEGAL.txt $(CONSOLE)/vendor/dagre.LEGAL.txt
	touch $@

$(FIREFOX_CHECKS_STAMP): $(FIREFOX_CHECKS)/package-lock.json $(FIREFOX_CHECKS)/package.json
	cd $(FIREFOX_CHECKS) && npm ci --no-audit --no-fund --silent
	touch $@

# Debian's Chromium and Firefox ESR for the console's browser tests (Playwright drives
# Chromium, puppeteer-core drives Firefox over WebDriver BiDi; neither tool's own browser
# builds can be downloaded). Each is installed when missing and we are root; otherwise its
# tests skip with a reason (and fail under CI=true).
browser:
	@for package in chromium firefox-esr; do \
		if command -v $$package >/dev/null 2>&1; then :; \
		elif [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq $$package >/dev/null 2>&1 || \
			{ apt-get update -qq >/dev/null && apt-get install -y -qq $$package >/dev/null; }; \
		else \
			echo "note: no $$package; install Debian's $$package package to run the console's tests in it"; \
		fi; \
	done

install: $(STAMP) $(CONSOLE_STAMP) $(FIREFOX_CHECKS_STAMP) browser

run: $(STAMP) $(CONSOLE_STAMP)
	$(BIN)/orchestra up --demo

# The console's pages from a demo stack, as PNG files in docs/console/.
screenshots: install
	$(BIN)/python -m tests.console.screenshots docs/console

test: $(STAMP) $(CONSOLE_STAMP) $(FIREFOX_CHECKS_STAMP) browser
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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CONSOLE)/node_modules $(CONSOLE)/vendor \
		$(FIREFOX_CHECKS)/node_modules
