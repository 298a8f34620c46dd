"""
The README's first command on a fresh copy of the checkout, with Debian's
own C{/usr/bin/python3} (externally managed: pip refuses to install into it)
first on PATH: C{make run} makes C{.venv/} with it, installs appserver there
and serves the pages, with nothing activated; SIGTERM stops the server and
make with status 0. That virtualenv has appserver without its C{redis}
extra, which is also what a user who forgot the extra has.

Slow (a virtualenv and a pip install), bounded in time; every process is
stopped by its pid (make's process group as a last resort).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")
BANNER = re.compile(r"appserver \S+ \(pid (\d+)\) is running (\S+): open (\S+) \(Ajax (\S+), WebSocket (\S+)\)")
#: Bound of the virtualenv and the install (from the package index or pip's cache).
INSTALL_TIMEOUT = 600


def _debian_python_or_skip() -> None:
    if not DEBIAN_PYTHON.exists() or shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs Debian's /usr/bin/python3, make and git")
    version = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    if version != "True":
        pytest.skip("/usr/bin/python3 is older than 3.11")


def clean_environment() -> dict[str, str]:
    """
    A shell's environment with Debian's python3 first on PATH and nothing
    of the test run's own Python, virtualenv or make.
    """
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYENV_VERSION", "MAKEFLAGS", "MAKELEVEL", "MFLAGS",
               "MAKEOVERRIDES")
    env = {key: value for key, value in os.environ.items()
           if key not in dropped and not key.startswith("APPSERVER_") and not key.startswith("PYTEST")}
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """
    The checkout as a fresh clone has it: its files (committed or not, less
    what git ignores), no virtualenv, no build.
    """
    _debian_python_or_skip()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    target = tmp_path_factory.mktemp("fresh") / "appserver"
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    assert not (target / ".venv").exists()
    return target


def test_make_run_works_on_a_fresh_clone_with_debians_python(clone):
    log_path = clone.parent / "make-run.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(["make", "run", "RUN_ARGS=--listen tcp:0:interface=127.0.0.1"], cwd=clone,
                                env=clean_environment(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + INSTALL_TIMEOUT
        found = None
        while time.monotonic() < deadline and found is None:
            found = BANNER.search(log_path.read_text(errors="replace"))
            if found is None and make.poll() is not None:
                raise AssertionError(f"make run exited with {make.returncode}:\n{log_path.read_text()}")
            time.sleep(0.2)
        assert found, f"no banner within {INSTALL_TIMEOUT}s:\n{log_path.read_text()}"
        pid, app, pages, ajax, _ = found.groups()
        assert app == "appserver.apps.gallery:app"
        # The virtualenv is Debian's python3's, and the server runs from it.
        assert os.path.realpath(clone / ".venv" / "bin" / "python").startswith("/usr/bin/python3")
        assert os.path.realpath(f"/proc/{pid}/cwd") == str(clone)
        with urllib.request.urlopen(pages + "gallery.html", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(ajax + "/get_client_count", timeout=10) as response:
            assert b"client_count" in response.read()

        os.kill(int(pid), signal.SIGTERM)
        assert make.wait(30) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)
            try:
                make.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(10)


def test_the_redis_backplane_without_its_extra_names_the_pip_command(clone):
    install = subprocess.run(["make", "install"], cwd=clone, env=clean_environment(), capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT)
    assert install.returncode == 0, install.stdout + install.stderr
    appserver = clone / ".venv" / "bin" / "appserver"
    result = subprocess.run([str(appserver), "--backplane", "redis://127.0.0.1:6379/0"], cwd=clone.parent,
                            env=clean_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and not result.stdout and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "appserver[redis]"' in lines[0] and "--backplane" in lines[0]
