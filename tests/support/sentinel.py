"""
A throw-away Redis Sentinel for tests (C{redis-server sentinel.conf
--sentinel}) watching one primary, with short failure detection so that a
failover takes a few seconds. Stopped by its pid.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from support.redis import free_port, redis_server_path

__all__ = ["SentinelServer", "PRIMARY_NAME"]

PRIMARY_NAME = "appserver-primary"


class SentinelServer:
    """
    One Sentinel on a free loopback port watching the primary at
    C{primary_port} under L{PRIMARY_NAME}.
    """

    def __init__(self, workdir: Path, primary_port: int, quorum: int = 1, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.primary_port = primary_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / f"sentinel-{self.port}.conf"
        self.log_path = self.workdir / f"sentinel-{self.port}.log"

    def start(self, timeout: float = 10.0) -> "SentinelServer":
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        # Sentinel rewrites its configuration file: one per Sentinel, fresh.
        self.config_path.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {PRIMARY_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {PRIMARY_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {PRIMARY_NAME} 1\n")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, str(self.config_path), "--sentinel"], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sentinel exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')}")
            if self.primary() is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sentinel did not answer on port {self.port} within {timeout}s")

    def primary(self) -> tuple[str, int] | None:
        """
        Where this Sentinel says the primary is now, or C{None}.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                name = PRIMARY_NAME.encode()
                sock.sendall(b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$%d\r\n%s\r\n"
                             % (len(name), name))
                reply = sock.recv(256).split(b"\r\n")
        except OSError:
            return None
        if not reply or reply[0] != b"*2" or len(reply) < 5:
            return None
        return reply[2].decode(), int(reply[4])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
