"""
Real servers for tests: in-process (same reactor as the test) and as a
twistd subprocess, both on free 127.0.0.1 ports.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._server.service import AppServerService
from appserver.tap import build_service
from appserver._server.settings import Settings

LOOPBACK = "tcp:0:interface=127.0.0.1"


@dataclass
class RunningServer:
    """
    An in-process server started by L{running_service}.
    """

    service: AppServerService

    @property
    def runtime(self):
        return self.service.runtime

    @property
    def tracker(self):
        return self.service.runtime.tracker

    def port(self, site: str) -> int:
        return self.service.ports[site]

    @property
    def static_url(self) -> str:
        if "single" in self.service.ports:
            return f"http://127.0.0.1:{self.port('single')}"
        return f"http://127.0.0.1:{self.port('static')}"

    @property
    def ajax_url(self) -> str:
        if "single" in self.service.ports:
            return f"http://127.0.0.1:{self.port('single')}/ajax"
        return f"http://127.0.0.1:{self.port('ajax')}"

    @property
    def ws_url(self) -> str:
        if "single" in self.service.ports:
            return f"ws://127.0.0.1:{self.port('single')}/ws"
        return f"ws://127.0.0.1:{self.port('ws')}/"

    def stop(self):
        from twisted.internet import defer
        return defer.maybeDeferred(self.service.stopService)


async def running_service(reactor: Any, app: App | None = None, **options: Any) -> RunningServer:
    """
    Start an L{AppServerService} on free loopback ports with the given
    options (names as in L{Settings}, underscores).
    """
    values: dict[str, Any] = {"static": LOOPBACK, "ajax": LOOPBACK, "ws": LOOPBACK, "access_log": False,
                              "shutdown_timeout": 1.0}
    values.update(options)
    settings = Settings.from_mapping(values)
    service = build_service(settings, app or chat_app, reactor=reactor)
    service.startService()
    return RunningServer(service)


class ServerProcess:
    """
    C{twistd -n appserver} in a subprocess on free ports, its ports read
    from its log. Stopped (SIGTERM, then SIGKILL) by its pid.
    """

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 single_port: bool = False, timeout: float = 20.0) -> None:
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.single_port = single_port
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = Path(cwd) / f"twistd-{id(self)}.log"

    def command(self) -> list[str]:
        sites = ["--listen", LOOPBACK] if self.single_port else \
            ["--static", LOOPBACK, "--ajax", LOOPBACK, "--ws", LOOPBACK]
        # The chat unless the test names its application: the default (the
        # gallery) publishes on timers, which would add traffic to the test.
        app = [] if any(arg == "--app" or arg.startswith("--app=") for arg in self.args) else \
            ["--app", "appserver.apps.chat:app"]
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--pidfile=", "-n", "appserver", *sites, *app, *self.args]

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        wanted = {"single"} if self.single_port else {"static", "ajax", "ws"}
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for site, port in re.findall(r"appserver (\w+) site listening on port (\d+)", self.log()):
                self.ports[site] = int(port)
            if wanted <= set(self.ports):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"appserver exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"appserver did not start within {self.timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, site: str) -> str:
        if self.single_port:
            base = f"127.0.0.1:{self.ports['single']}"
            return {"static": f"http://{base}", "ajax": f"http://{base}/ajax", "ws": f"ws://{base}/ws"}[site]
        scheme = "ws" if site == "ws" else "http"
        return f"{scheme}://127.0.0.1:{self.ports[site]}" + ("/" if site == "ws" else "")

    def terminate(self, timeout: float = 10.0) -> int | None:
        """
        SIGTERM (graceful shutdown) and wait; returns the exit code.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.terminate() is None:
            self.kill()
        self._log.close()


def free_ports(count: int) -> list[int]:
    """
    Ports free on 127.0.0.1 now, for a server that must come back on the
    same ports after a restart.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def fixed_ports(ports: list[int]) -> list[str]:
    """
    The site options for a twistd server on the given static, Ajax and
    WebSocket ports.
    """
    static, ajax, ws = ports
    return ["--static", f"tcp:{static}:interface=127.0.0.1", "--ajax", f"tcp:{ajax}:interface=127.0.0.1",
            "--ws", f"tcp:{ws}:interface=127.0.0.1"]


def wait_for_log(process: ServerProcess, text: str, timeout: float = 10.0) -> str:
    """
    Block until C{text} is in the server's log (for tests that drive no
    reactor meanwhile); return the log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = process.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{process.log()}")


def wait_until_ready(process: ServerProcess, timeout: float = 20.0) -> None:
    """
    Block until the server's C{GET /readyz} answers 200: listening is not
    enough for a node on a backplane, which joins its cluster (connects,
    loads its scripts, subscribes, catches up) only once its reactor runs,
    and until then serves as if the backplane were down (a session of
    another node is unknown to it).
    """
    url = process.url("ajax") + "/readyz"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"{error.code} {error.read()[:300]!r}"
        except OSError as error:
            last = str(error)
        if process.process is not None and process.process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {timeout}s ({last}):\n{process.log()}")

