# appserver: two commands set everything up on a fresh machine.
#   make run   makes a virtualenv in .venv/, installs appserver into it and starts it:
#              open http://127.0.0.1:9000/ (pages; Ajax on 9001, WebSocket on 9002)
#   make test  also installs the test dependencies and runs every test
#
# Nothing needs activating: every target runs .venv/bin/python. The virtualenv
# is made by $(PYTHON), any Python 3.11 or newer (make run PYTHON=python3.12).
# Debian packages (python3-venv; for the tests Chromium, redis-server, nginx,
# Node.js and npm) are installed when missing if you are root; otherwise make
# prints the apt-get command to run and stops.
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
APP ?= appserver.apps.gallery:app
RUN_ARGS ?=

.PHONY: install install-test system-deps run test test-python test-js typecheck bench clean

$(VENV_PYTHON):
	@sh tools/make-venv.sh "$(PYTHON)" "$(VENV)"

# Installed again only when the package's metadata changes (the install is
# editable: the code itself is used in place).
$(VENV)/.installed: $(VENV_PYTHON) setup.cfg pyproject.toml
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

system-deps:
	@sh tools/debian-packages.sh chromium:chromium redis-server:redis-server nginx:nginx-light node:nodejs npm:npm

install-test: install system-deps $(VENV)/.installed-test

run: install
	$(VENV)/bin/appserver --app $(APP) $(RUN_ARGS)

test: install-test typecheck test-js test-python

typecheck: $(VENV)/.installed-test
	$(VENV_PYTHON) -m mypy

test-python: $(VENV)/.installed-test
	$(VENV_PYTHON) -m pytest -q

test-js: js-check
	JS_TOOLS_REQUIRED=1 node --test tests/js/

# The browser client (js/): sources in js/src, the generated files committed.
# Only these targets need npm; the server and its users never do.
.PHONY: js-deps js-build js-check
js-deps:
	npm ci --prefix js --no-audit --no-fund --loglevel=error

js-build: js-deps
	node js/build.mjs

js-check: js-deps
	node js/build.mjs --check

bench: install
	$(PIP) install -q -r bench/requirements.txt
	npm install --silent --prefix bench
	$(VENV_PYTHON) bench/run.py $(BENCH_ARGS)

# The virtualenv too: make run or make test makes it again.
clean:
	rm -rf build dist server/*.egg-info server/twisted/plugins/dropin.cache .pytest_cache $(VENV)
