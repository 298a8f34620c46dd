"""
C{twistd -n appserver} as a real subprocess: it serves the three sites,
stops gracefully on SIGTERM, and refuses bad start-ups with a clear message
and a non-zero exit. Every process is stopped by its pid.
"""

import json
import signal
import socket
import subprocess
import sys

import pytest
import pytest_twisted
import treq

from appserver._server.settings import OPTION_SPECS
from support.servers import ServerProcess
from support.wsclient import next_message, open_client, wait_closed

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile="]


def run_to_exit(args, cwd, timeout=30):
    """
    Run a twistd that is expected to exit by itself; killed by its pid if
    it does not.
    """
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        raise AssertionError(f"{args} did not exit within {timeout}s")
    return process.returncode, output.decode("utf-8", "replace")


@pytest_twisted.ensureDeferred
async def test_twistd_serves_all_three_sites_and_stops_on_sigterm(server_process, reactor):
    server = server_process()
    response = await treq.get(server.url("static") + "/", persistent=False)
    assert response.code == 200 and b"<html" in (await response.content()).lower()
    client = await open_client(server.url("ws"), reactor)
    assert (await next_message(client, reactor, "welcome"))["data"]["transport"] == "websocket"
    response = await treq.get(server.url("ajax") + "/get_client_count", params={"callback": "cb"},
                              persistent=False)
    body = await response.content()
    assert body.startswith(b"/**/cb(") and json.loads(body[7:-2])["websocket"] == 1
    from twisted.internet import threads
    code = await threads.deferToThread(server.terminate, 15)
    # twistd ends by re-raising the signal that stopped it, after a clean shutdown.
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Server Shut Down." in server.log() and "Traceback" not in server.log()
    assert (await wait_closed(client, reactor))[0] in (1001, 1006)


@pytest_twisted.ensureDeferred
async def test_twistd_in_single_port_mode(server_process, reactor):
    server = server_process(single_port=True)
    client = await open_client(server.url("ws"), reactor)
    await next_message(client, reactor, "welcome")
    response = await treq.get(server.url("ajax") + "/get_client_count", persistent=False)
    assert json.loads(await response.content())["client_count"] == 1
    response = await treq.get(server.url("static") + "/vendor/jquery.min.js", persistent=False)
    assert response.code == 200
    await response.content()
    client.sendClose()
    await wait_closed(client, reactor)


def test_a_port_already_in_use_is_a_clear_error_and_a_non_zero_exit(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        command = ServerProcess(["--ajax", f"tcp:{port}:interface=127.0.0.1"], cwd=tmp_path).command()
        code, output = run_to_exit(command, tmp_path)
    assert code != 0
    assert f"tcp:{port}:interface=127.0.0.1" in output and "ajax" in output
    assert "in use" in output.lower()


def test_a_bad_endpoint_is_a_usage_error_naming_the_option(tmp_path):
    code, output = run_to_exit(TWISTD + ["-n", "appserver", "--ws", "bogus:1"], tmp_path)
    assert code != 0
    assert "--ws" in output and "bogus:1" in output
    assert "Traceback" not in output


def test_help_lists_every_option(tmp_path):
    code, output = run_to_exit(TWISTD + ["appserver", "--help"], tmp_path)
    assert code == 0
    for spec in OPTION_SPECS:
        assert f"--{spec.name}" in output, spec.name


@pytest.mark.parametrize("args, fragment", [
    (["--app", "no_such_module_xyz:app"], "cannot import"),
    (["--max-message-size", "huge"], "max-message-size"),
    (["--allowed-origin", "example.com"], "allowed-origin"),
])
def test_bad_options_are_usage_errors_without_traceback(tmp_path, args, fragment):
    code, output = run_to_exit(TWISTD + ["-n", "appserver", *args], tmp_path)
    assert code != 0 and fragment in output and "Traceback" not in output
