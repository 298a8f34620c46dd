"""
Shared fixtures: the reactor (pytest-twisted has none), an in-process server
on free loopback ports, and a twistd subprocess server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# The demo board keeps its posts in a per-user SQLite file by default: servers
# the tests start (in process or as subprocesses, which inherit this) keep
# theirs in memory unless a test names a file, and a test that clears the
# APPSERVER_* variables writes under a data directory of the run's own.
os.environ.setdefault("APPSERVER_BOARD_DB", ":memory:")
_DATA_HOME = tempfile.mkdtemp(prefix="appserver-tests-data-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME
atexit.register(shutil.rmtree, _DATA_HOME, True)

from support.servers import ServerProcess, running_service  # noqa: E402


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor
    return global_reactor


@pytest.fixture
def server_factory(reactor):
    """
    Start in-process servers (real sockets on 127.0.0.1 free ports) and
    stop them at the end of the test: C{await server_factory(**options)}.
    """
    started = []

    async def start(app=None, **options):
        server = await running_service(reactor, app=app, **options)
        started.append(server)
        return server

    yield start
    import pytest_twisted
    for server in started:
        pytest_twisted.blockon(server.stop())


@pytest.fixture
def server_process(tmp_path):
    """
    Start C{twistd -n appserver} subprocesses; each is stopped by its pid.
    """
    processes = []

    def start(*args, env=None, **kwargs):
        process = ServerProcess(list(args), cwd=tmp_path, env=env, **kwargs)
        process.start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def clients():
    """
    Recovering clients (tests/support/recovering_client.py) stopped at the
    end of the test: C{client = clients(RecoveringWebSocket(...))}.
    """
    import pytest_twisted
    from twisted.internet import defer

    made = []

    def track(client):
        made.append(client)
        return client

    yield track
    for client in made:
        pytest_twisted.blockon(defer.ensureDeferred(client.stop()))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("APPSERVER_SKIP_BROWSER"):
        skip = pytest.mark.skip(reason="APPSERVER_SKIP_BROWSER is set")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)
