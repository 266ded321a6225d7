# xmpp.prosody: `make demo` and `make test` are the contract (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COLLECTION_COPY = $(shell scripts/sync-collection.sh)
ANSIBLE_TEST_PYTHON := 3.11

.PHONY: all command demo test test-deps venv lint units sanity integration e2e distro collection-install bench explore clean

all: test

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Plain pytest (e2e, explore) imports the checkout as ansible_collections.xmpp.prosody through
# this link (pyproject.toml's pythonpath); ansible-test uses its own copy instead.
LINK := .build/collections/ansible_collections/xmpp/prosody
$(LINK):
	mkdir -p $(dir $(LINK))
	ln -sfn ../../../.. $(LINK)

# Debian's Prosody (the oracle), Lua, the LuaDBI drivers, and the two database servers.
test-deps:
	scripts/install-system-deps.sh
	scripts/start-services.sh

# ansible-test reads its pip bootstrap script from this cache (see the script's docstring).
ansible-test-cache:
	mkdir -p $(HOME)/.ansible/test/cache
	cp scripts/ansible-test-get-pip.py $(HOME)/.ansible/test/cache/get_pip_24_2.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

units: venv test-deps ansible-test-cache
	cd $(COLLECTION_COPY) && PATH=$(BIN):$$PATH $(BIN)/ansible-test units --venv --python $(ANSIBLE_TEST_PYTHON) --requirements

sanity: venv test-deps ansible-test-cache
	cd $(COLLECTION_COPY) && PATH=$(BIN):$$PATH $(BIN)/ansible-test sanity --venv --python $(ANSIBLE_TEST_PYTHON) --requirements

# Integration targets against the real databases (see the script): the module and its packaging,
# and the role run on a three-host fleet (PostgreSQL, MariaDB, SQLite3) twice.
integration: venv test-deps
	scripts/run-integration.sh prosody_migrate prosody_migrate_role

# End to end: migrate into PostgreSQL, start Debian's Prosody on it, log in with slixmpp.
$(VENV)/.installed-e2e: $(STAMP) requirements-e2e.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-e2e.txt
	touch $@

e2e: $(VENV)/.installed-e2e test-deps $(LINK)
	$(BIN)/pytest -p no:cacheprovider tests/e2e

# The command and engine under /usr/bin/python3 with Debian 12's python3-lupa (1.14, on LuaJIT),
# python3-psycopg and python3-pymysql, as the role installs them on Debian (not the venv).
distro: test-deps
	scripts/test-distro-python.sh

test: lint units sanity integration e2e distro

# The collection as users get it: built into a tarball and installed beside the venv.
collection-install: venv
	rm -rf .build/dist
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist . >/dev/null
	$(BIN)/ansible-galaxy collection install --force -p $(VENV)/collections .build/dist/xmpp-prosody-*.tar.gz >/dev/null

# The command as users run it: the installed collection's launcher, run by the venv's Python.
command: collection-install
	printf '#!/bin/sh\nexec "%s" "%s" "$$@"\n' "$(BIN)/python" \
	  "$(VENV)/collections/ansible_collections/xmpp/prosody/scripts/prosody-migrator" > $(BIN)/prosody-migrator
	chmod +x $(BIN)/prosody-migrator

demo: command
	$(BIN)/python demo/demo.py

# Benchmarks (not part of make test): ratios against the real prosody-migrator, measured in one
# run. Defaults to the small and medium sizes; e.g. make bench BENCH_ARGS="--sizes small --skip-real".
BENCH_ARGS ?=
bench: venv test-deps
	$(BIN)/python bench/bench_luadata.py
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

# Hypothesis with fresh random examples, many more than `make test` runs.
explore: venv test-deps $(LINK)
	$(BIN)/pytest --hypothesis-profile=explore tests/unit

clean:
	rm -rf .build .venv
