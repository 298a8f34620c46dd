"""
The C{appserver} console command, as a user runs it: the README's own
application run exactly as the README shows it from the directory holding
C{myapp.py}; a start-up banner with the URLs to open; Ctrl-C and SIGTERM end
it with status 0; C{python -m appserver} and C{twistd -n appserver} find an
C{--app} module in the current directory; and every mistake a newcomer makes
is one line on standard error, naming what to change, with a non-zero exit
status and no traceback.

Every process is a real one, started with the installed console script (not
through C{python -c}) on free loopback ports, and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from appserver import __version__
from support.redis import free_port
from support.wsclient import next_message, open_welcomed, send

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LOOPBACK = "tcp:0:interface=127.0.0.1"
#: Free ports for the three sites without changing a command line.
FREE_PORTS = {"APPSERVER_STATIC": LOOPBACK, "APPSERVER_AJAX": LOOPBACK, "APPSERVER_WS": LOOPBACK}
BANNER = re.compile(r"appserver \S+ \(pid (\d+)\) is running (\S+): open (\S+) \(Ajax (\S+), WebSocket (\S+)\)")


def console_script() -> str:
    """
    The C{appserver} command installed with the Python running the tests.
    """
    script = Path(sys.executable).parent / "appserver"
    assert script.exists(), f"no {script}: install appserver into this Python (pip install -e .)"
    return str(script)


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("APPSERVER_")}
    env.update(extra)
    return env


def _as_from_a_terminal() -> None:
    """
    Run in the child before it starts: Ctrl-C (SIGINT) handled as a command
    started from a terminal has it. A test run started as a background job
    of a shell without job control (a CI script's C{cmd &}) ignores SIGINT,
    children inherit that, and a server started that way rightly ignores
    Ctrl-C, as Unix wants of background jobs.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Running:
    """
    A server command started in a subprocess, its output in a file; stopped
    by its pid.
    """

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 20.0) -> None:
        self.output = cwd / f"appserver-{time.monotonic_ns()}.log"
        self._file = open(self.output, "wb")
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._file, stderr=subprocess.STDOUT,
                                        preexec_fn=_as_from_a_terminal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = BANNER.search(self.log())
            if found:
                self.pid, self.app, self.pages, self.ajax, self.ws = found.groups()
                return
            if self.process.poll() is not None:
                raise AssertionError(f"{args} exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{args} printed no banner within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def signal(self, number: int, timeout: float = 15.0) -> int:
        self.process.send_signal(number)
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._file.close()


@pytest.fixture
def start(tmp_path):
    started: list[Running] = []

    def run(args: list[str], cwd: Path = tmp_path, env: dict[str, str] | None = None) -> Running:
        server = Running(args, cwd, env if env is not None else environment(**FREE_PORTS))
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def run_to_exit(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 30.0) -> tuple[int, str, str]:
    """
    Run a command that must exit by itself; killed by its pid if it does not.
    """
    process = subprocess.Popen(args, cwd=cwd, env=env if env is not None else environment(**FREE_PORTS),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        raise AssertionError(f"{args} did not exit within {timeout}s")
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def one_line_error(code: int, out: str, err: str) -> str:
    """
    A mistake's answer: a non-zero status, one line on standard error, at
    most a few lines in all, no traceback and no help text.
    """
    assert code != 0, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert len((out + err).strip().splitlines()) <= 3, out + err
    assert "Traceback" not in out + err and "Options:" not in out + err
    return lines[0]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


# The README's own application ---------------------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def readme_application() -> tuple[str, list[str]]:
    """
    The README's C{myapp.py} and the one command it says to run it with.
    """
    section = readme_section("Write your own application")
    code = re.search(r"```python\n(# myapp\.py\n.*?)```", section, re.S)
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    assert code and shell, "the README's own-application example has a python and a sh block"
    commands = [line.split("  #")[0].strip() for line in shell.group(1).splitlines()
                if line.strip() and not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("appserver "), commands
    return code.group(1), shlex.split(commands[0])


@pytest_twisted.ensureDeferred
async def test_the_readmes_own_application_runs_as_shown_from_its_directory(tmp_path, start, reactor):
    code, command = readme_application()
    (tmp_path / "myapp.py").write_text(code)
    # Exactly the README's command line; only the ports come from the
    # environment (APPSERVER_*), so the test takes free ones.
    server = start([console_script(), *command[1:]])
    assert server.app == "myapp:app"

    answer = await deferToThread(get_json, server.ajax + "/time")
    assert set(answer) == {"time"}

    client = await open_welcomed(server.ws, reactor)
    send(client, "add", {"a": 1, "b": 2}, 1)
    reply = await next_message(client, reactor, "reply")
    assert reply == {"type": "reply", "re": "add", "id": 1, "data": 3}
    send(client, "subscribe", {"channel": "clock"}, 2)
    assert (await next_message(client, reactor, "reply"))["id"] == 2
    tick = await next_message(client, reactor, "message")
    assert tick["channel"] == "clock" and isinstance(tick["data"], str)
    send(client, "chat", "hello")                                   # the included chat
    assert (await next_message(client, reactor, "chat"))["data"].endswith(": hello")
    client.sendClose()

    code = await deferToThread(server.signal, signal.SIGTERM)
    assert code == 0, server.log()
    assert "Traceback" not in server.log()


# Running ---------------------------------------------------------------------------


def test_the_banner_names_the_app_and_the_urls_to_open(start):
    server = start([console_script()])
    assert server.app == "appserver.apps.gallery:app"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.pages)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.ajax)
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", server.ws)
    assert len({server.pages, server.ajax, server.ws}) == 3
    with urllib.request.urlopen(server.pages, timeout=10) as response:
        assert response.status == 200
    # Each site is announced once, by appserver.
    assert "LoggingSite starting on" not in server.log()
    assert int(server.pid) == server.process.pid


def test_the_banner_in_single_port_mode_gives_the_paths_on_one_port(start, tmp_path):
    server = start([console_script(), "--listen", LOOPBACK], env=environment())
    port = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", server.pages).group(1)
    assert server.ajax == f"http://127.0.0.1:{port}/ajax"
    assert server.ws == f"ws://127.0.0.1:{port}/ws"
    assert get_json(server.ajax + "/get_client_count")["client_count"] == 0


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_it_cleanly_with_status_zero(start, number):
    server = start([console_script()])
    assert server.signal(number) == 0
    assert "Traceback" not in server.log() and "Main loop terminated." in server.log()


def test_python_dash_m_appserver_is_the_same_command(start, tmp_path):
    (tmp_path / "hello_app.py").write_text("from appserver import App\napp = App('hello')\n")
    server = start([sys.executable, "-m", "appserver", "--app", "hello_app:app"])
    assert server.app == "hello_app:app"


def test_twistd_finds_an_app_module_in_the_current_directory(tmp_path):
    # The twistd script itself (not "python -c"), which puts only its own
    # directory on sys.path.
    twistd = Path(sys.executable).parent / "twistd"
    (tmp_path / "hello_app.py").write_text("from appserver import App\napp = App('hello')\n")
    process = Running([str(twistd), "--pidfile=", "-n", "appserver", "--app", "hello_app:app"], tmp_path,
                      environment(**FREE_PORTS))
    try:
        assert process.app == "hello_app:app"
        assert process.signal(signal.SIGTERM) in (0, -signal.SIGTERM)
    finally:
        process.stop()


def test_version_prints_appservers_version(tmp_path):
    code, out, err = run_to_exit([console_script(), "--version"], tmp_path)
    assert code == 0 and out.startswith(f"appserver {__version__} (Twisted ") and not err


def test_help_is_clean_and_lists_every_option(tmp_path):
    from appserver._server.settings import OPTION_SPECS
    code, out, err = run_to_exit([console_script(), "--help"], tmp_path)
    assert code == 0 and not err
    assert out.startswith("Usage: appserver [options]\n")
    for spec in OPTION_SPECS:
        assert f"--{spec.name}=" in out, spec.name
    options = out.split("Options:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert not [line for line in options if "  " in line[34:]], "stray runs of spaces in the help"
    # Each option's default is given once, and the guide is where it says.
    for entry in " ".join(options).split("      --"):
        assert entry.lower().count("default") <= 1, entry
    guide = re.search(r"User guide:\s+(\S+)", out)
    assert guide and Path(guide.group(1)).is_file()


# Mistakes: one line each ------------------------------------------------------------


def test_a_busy_port_names_the_site_the_endpoint_and_the_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        code, out, err = run_to_exit([console_script(), "--ajax", endpoint], tmp_path)
    line = one_line_error(code, out, err)
    assert "the ajax site" in line and endpoint in line and "in use" in line and "pass --ajax" in line


def test_a_bad_endpoint_names_the_option_and_shows_good_ones(tmp_path):
    line = one_line_error(*run_to_exit([console_script(), "--ws", "tpc:9002"], tmp_path))
    assert "--ws 'tpc:9002'" in line and "tcp:9000" in line


def test_an_unknown_option_names_the_closest_one(tmp_path):
    line = one_line_error(*run_to_exit([console_script(), "--max-conections", "5"], tmp_path))
    assert line == "appserver: unknown option --max-conections; did you mean --max-connections?"


def test_an_app_that_cannot_be_imported_names_the_directory_searched(tmp_path):
    line = one_line_error(*run_to_exit([console_script(), "--app", "mispelled:app"], tmp_path))
    assert "cannot import 'mispelled'" in line and str(tmp_path) in line


def test_an_app_module_that_fails_to_import_says_where(tmp_path):
    (tmp_path / "broken.py").write_text("from appserver import App\napp = App(\n")
    line = one_line_error(*run_to_exit([console_script(), "--app", "broken:app"], tmp_path))
    assert "importing 'broken' failed" in line and "broken.py:2" in line and "SyntaxError" in line


@pytest.mark.parametrize("option", ["--html", "--js"])
def test_a_missing_web_directory_is_named(tmp_path, option):
    missing = tmp_path / "nowhere"
    line = one_line_error(*run_to_exit([console_script(), option, str(missing)], tmp_path))
    assert f"{option} {missing}: no such directory" in line


def test_an_unreachable_redis_names_the_address_and_what_to_do(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line_error(*run_to_exit([console_script(), "--backplane", url], tmp_path))
    assert f"cannot reach the Redis backplane at {url}" in line and "redis-server" in line


def test_a_stray_argument_is_one_line(tmp_path):
    line = one_line_error(*run_to_exit([console_script(), "myapp:app"], tmp_path))
    assert "unexpected argument 'myapp:app'" in line


def test_twistd_gives_the_same_one_line_for_an_unknown_option(tmp_path):
    twistd = str(Path(sys.executable).parent / "twistd")
    line = one_line_error(*run_to_exit([twistd, "--pidfile=", "-n", "appserver", "--htlm", "x"], tmp_path))
    assert line == "twistd appserver: unknown option --htlm; did you mean --html?"
