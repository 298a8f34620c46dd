"""The servers under test: how each one is started, checked and stopped.

Why one table: appserver is being written while this harness is, so its
command line lives in exactly one place (``SERVER_SPECS["appserver"]``) that
the lead can adjust without reading the rest of the harness.  Every server is
a direct child process (no shell in between), so the pid we read CPU time and
memory from is the server itself, and it is stopped by that pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import procstat

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


def _twistd() -> str:
    """twistd next to this interpreter (avoids pyenv/venv shims), else the one on PATH."""
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    return shutil.which("twistd") or "twistd"


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server.

    ``argv`` items may contain ``{ws_port}``, ``{ajax_port}``, ``{bench}``,
    ``{repo}`` and ``{python}``; they are filled in at start.  ``env`` entries
    are added to the harness's environment (same placeholders).
    """

    name: str
    argv: tuple[str, ...]
    ws_path: str = "/"
    longpoll: bool = False
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


#: appserver's options in every variant (the reactor is what varies).
_APPSERVER_OPTIONS = (
    "--app", "appserver.apps.chat:app",
    "--static", "tcp:0:interface=127.0.0.1",
    "--ajax", "tcp:{ajax_port}:interface=127.0.0.1",
    "--ws", "tcp:{ws_port}:interface=127.0.0.1",
    "--max-connections", "20000",
    "--max-connections-per-ip", "20000",
    "--rate-limit", "0",
)

# ---------------------------------------------------------------------------
# THE SERVERS UNDER TEST.  appserver's command line is the first entry.
# ---------------------------------------------------------------------------
SERVER_SPECS: dict[str, ServerSpec] = {
    "appserver": ServerSpec(
        name="appserver",
        argv=(_twistd(), "--pidfile=", "-n", "appserver", *_APPSERVER_OPTIONS),
        ws_path="/",
        longpoll=True,
        # Lets a fresh checkout run without `pip install -e .`: twisted.plugins
        # also scans server/twisted/plugins when server/ is on sys.path.
        env={"PYTHONPATH": "{repo}/server"},
        description="appserver (Twisted + Autobahn), twistd plugin",
    ),
    # The same server on the asyncio reactor (the appserver command's
    # default) and on uvloop's loop: `--servers appserver,appserver-asyncio,
    # appserver-uvloop` compares the reactors in one run.
    "appserver-asyncio": ServerSpec(
        name="appserver-asyncio",
        argv=(_twistd(), "--pidfile=", "--reactor=asyncio", "-n", "appserver", *_APPSERVER_OPTIONS),
        env={"PYTHONPATH": "{repo}/server"},
        description="appserver on Twisted's asyncio reactor (twistd --reactor=asyncio)",
    ),
    "appserver-uvloop": ServerSpec(
        name="appserver-uvloop",
        argv=("{python}", "-m", "appserver", "--reactor", "uvloop", *_APPSERVER_OPTIONS),
        env={"PYTHONPATH": "{repo}/server"},
        description="appserver on the asyncio reactor over uvloop's loop (appserver --reactor uvloop)",
    ),
    "websockets": ServerSpec(
        name="websockets",
        argv=("{python}", "{bench}/peers/websockets_server.py", "--port", "{ws_port}"),
        description="asyncio + websockets library, broadcast()",
    ),
    "ws-node": ServerSpec(
        name="ws-node",
        argv=("node", "{bench}/peers/ws_server.js", "--port", "{ws_port}"),
        description="Node 20 + ws, client.send() loop",
    ),
    "minimal": ServerSpec(
        name="minimal",
        argv=("{python}", "{bench}/peers/minimal_server.py", "--port", "{ws_port}"),
        description="raw asyncio Protocol, pre-framed bytes to every transport (the floor)",
    ),
}
REFERENCE_SERVERS = ("ws-node", "minimal")


class ServerStartError(Exception):
    """The server exited or never accepted connections; carries its output for the report."""


def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1 (released before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One running server: started on free ports, output to a temp file, stopped by pid."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.ws_port = free_port()
        self.ajax_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{spec.name}-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.spec.ws_path}"

    @property
    def ajax_url(self) -> str:
        return f"http://127.0.0.1:{self.ajax_port}"

    def _fill(self, template: str) -> str:
        return template.format(
            ws_port=self.ws_port, ajax_port=self.ajax_port, bench=BENCH_DIR, repo=REPO_DIR, python=sys.executable
        )

    def command(self) -> list[str]:
        return [self._fill(arg) for arg in self.spec.argv]

    async def start(self, timeout: float) -> None:
        """Start the process and wait until its WebSocket port accepts TCP connections."""
        env = dict(os.environ)
        for key, value in self.spec.env.items():
            value = self._fill(value)
            env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches the harness only; it stops us.
            )
        except OSError as exc:
            raise ServerStartError(f"cannot execute {self.command()[0]}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"exited with status {self.proc.returncode}\n{self.output_tail()}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.ws_port), 1.0)
            except (TimeoutError, OSError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise ServerStartError(f"port {self.ws_port} not open after {timeout:.0f}s\n{self.output_tail()}")

    def output_tail(self, max_chars: int = 4000) -> str:
        """The last part of the server's combined stdout/stderr (for failure reports)."""
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by pid, then SIGKILL if it is still running after ``timeout``; removes the log."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and procstat.is_alive(self.pid)
