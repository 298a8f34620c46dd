# appserver: two commands set everything up on a fresh machine.
#   make run   installs the server and starts it on ports 9000 (pages), 9001 (Ajax), 9002 (WebSocket)
#   make test  installs the test dependencies (Chromium, redis-server when missing) and runs every test
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TWISTD ?= $(PYTHON) -c "from twisted.scripts.twistd import run; run()"
APP ?= appserver.apps.gallery:app
RUN_ARGS ?=

.PHONY: install install-test system-deps run test test-python test-js typecheck bench clean

install:
	$(PIP) install -q -e .

system-deps:
	@command -v chromium >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server nginx-light >/dev/null)

install-test: install system-deps
	$(PIP) install -q -e '.[test]'

run: install
	$(TWISTD) --pidfile= -n appserver --app $(APP) $(RUN_ARGS)

test: install-test typecheck test-js test-python

typecheck:
	$(PYTHON) -m mypy

test-python:
	$(PYTHON) -m pytest -q

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
	$(PYTHON) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build dist server/*.egg-info server/twisted/plugins/dropin.cache .pytest_cache
