"""
A throw-away nginx in front of appserver nodes, configured with the nginx
block of docs/scaling.md (so the documented configuration is the tested
one), on a loopback port, its pid, logs and temporary files under a test
directory, stopped by its pid.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .redis import free_port

__all__ = ["NginxServer", "nginx_path", "config_from_docs"]

ROOT = Path(__file__).resolve().parent.parent.parent


def nginx_path() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def config_from_docs(listen: int, upstreams: list[int], workdir: Path) -> str:
    """
    The nginx block of docs/scaling.md with these ports, wrapped in the few
    top-level lines a throw-away nginx needs.
    """
    text = (ROOT / "docs" / "scaling.md").read_text()
    match = re.search(r"```nginx\n(.*?)```", text, re.S)
    assert match, "docs/scaling.md has no nginx block"
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstreams)
    block = re.sub(r"(upstream appserver \{\n)(?:\s*server [^\n]*\n)+", lambda m: m.group(1) + servers,
                   match.group(1))
    block = block.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    assert f"127.0.0.1:{upstreams[0]}" in block and f"127.0.0.1:{listen}" in block
    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    return (f"worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {workdir}/nginx-access.log;\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            f"{block}\n}}\n")


class NginxServer:
    """
    C{nginx -c <conf> -g 'daemon off;'} balancing over C{upstreams}.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, upstreams: list[int], timeout: float = 10.0) -> "NginxServer":
        binary = nginx_path()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        conf = self.workdir / "nginx.conf"
        conf.write_text(config_from_docs(self.port, upstreams, self.workdir))
        output = self.workdir / "nginx-output.log"
        with open(output, "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.workdir), "-e", str(self.workdir / "nginx-error.log"), "-c", str(conf),
                 "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: "
                                   f"{output.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
