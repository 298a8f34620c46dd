"""
A throw-away redis-server for tests: a free loopback port, no persistence,
stopped by its pid. It can be stopped and started again on the same port
(to test a Redis outage); it comes back empty, like a Redis without
persistence after a crash.

Extra arguments make it a replica (C{--replicaof}) or a TLS-only server
(with L{support.certificates.TestCertificates}: C{tls=}).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Sequence, TYPE_CHECKING

if TYPE_CHECKING:
    from support.certificates import TestCertificates

__all__ = ["RedisServer", "redis_server_path", "free_port"]


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """
    C{redis-server --port P --bind 127.0.0.1 --save "" --appendonly no}.
    """

    def __init__(self, workdir: Path, port: int | None = None, args: Sequence[str] = (),
                 tls: "TestCertificates | None" = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.args = list(args)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ca={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listening(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no", "--tls-replication", "yes"]

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [binary, *self._listening(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.args],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as plain:
                sock = plain
                if self.tls is not None:
                    context = ssl.create_default_context(cafile=str(self.tls.ca))
                    # Good for client authentication too (--tls-auth-clients yes).
                    context.load_cert_chain(str(self.tls.server_cert), str(self.tls.server_key))
                    sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """
        One command through redis-cli (for assertions), its raw output.
        """
        tls = [] if self.tls is None else ["--tls", "--cacert", str(self.tls.ca), "--cert", str(self.tls.server_cert),
                                           "--key", str(self.tls.server_key)]
        return subprocess.run(["redis-cli", "-p", str(self.port), *tls, *args], capture_output=True,
                              timeout=10, check=True).stdout

    def stop(self) -> None:
        """
        SIGKILL by pid (its data is thrown away anyway) and wait.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
