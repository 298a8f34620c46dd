"""
The demo chat page (html/index.html) in a real browser keeps working across
a server restart and loses nothing: lines said by another client while the
page was reconnecting appear on the page exactly once, in order.

Headless Chromium through Playwright's synchronous API; the server is a
C{twistd appserver} process with C{--state-file}, stopped with SIGTERM and
started again on the same ports. The other client is a plain blocking Ajax
client (urllib), so nothing here needs the test's reactor.

To make "while the page was reconnecting" certain rather than a matter of
timing, an init script puts a gate in front of the page's network: while
it is closed, the page's WebSocket attempts go to a closed port and its
fetches fail, as when the server is unreachable.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

from support.servers import fixed_ports, free_ports
from support.browser import browser, new_page  # noqa: E402,F401  (fixtures)

GATE = """
(function () {
  var gate = window.__gate = {closed: false, deadUrl: "ws://127.0.0.1:%(dead_port)d/"};
  var RealWebSocket = window.WebSocket;
  function GatedWebSocket(url, protocols) {
    var target = gate.closed ? gate.deadUrl : url;
    return protocols === undefined ? new RealWebSocket(target) : new RealWebSocket(target, protocols);
  }
  GatedWebSocket.prototype = RealWebSocket.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) {
    GatedWebSocket[name] = RealWebSocket[name];
  });
  window.WebSocket = GatedWebSocket;
  var realFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    if (gate.closed) { return Promise.reject(new TypeError("network gate closed")); }
    return realFetch(input, init);
  };
}());
"""




class ChatSender:
    """
    Another participant: an Ajax session that only sends chat lines.
    """

    def __init__(self, ajax_url: str) -> None:
        self.ajax_url = ajax_url
        self.session: str | None = None
        self.session = self._post("/connect", None)["session"]

    def _post(self, path: str, envelope) -> dict:
        body = json.dumps(envelope).encode() if envelope is not None else b""
        headers = {"Content-Type": "text/plain"}
        if self.session is not None:
            headers["X-AppServer-Session"] = self.session
        request = urllib.request.Request(self.ajax_url + path, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def say(self, text: str) -> None:
        assert self._post("/send", {"type": "chat", "data": text}) == {"ok": True}

    def leave(self) -> None:
        self._post("/disconnect", None)


def lines(*texts: str) -> list[re.Pattern[str]]:
    return [re.compile(r"^Message from \S+ : " + re.escape(text) + "$") for text in texts]


@pytest.mark.browser
def test_the_chat_page_recovers_every_line_said_while_it_was_reconnecting(server_process, new_page, tmp_path):
    ports = free_ports(4)
    options = [*fixed_ports(ports[:3]), "--state-file", str(tmp_path / "state.json"), "--shutdown-timeout", "2"]
    first = server_process(*options)
    page = new_page(first.url("static") + "/", init_script=GATE % {"dead_port": ports[3]})
    status, log = page.locator("#status"), page.locator("#content li")
    expect(status).to_have_text("connected over websocket")

    sender = ChatSender(first.url("ajax"))
    sender.say("before the restart")
    expect(log).to_have_text(lines("before the restart"))

    page.evaluate("window.__gate.closed = true")
    assert first.terminate() is not None, "the server did not stop"
    expect(status).to_have_text("reconnecting…")

    second = server_process(*options)
    assert second.ports == first.ports
    sender = ChatSender(second.url("ajax"))
    sender.say("while the page was away 1")
    sender.say("while the page was away 2")
    expect(status).to_have_text("reconnecting…")     # the page really was away

    page.evaluate("window.__gate.closed = false")
    # The next attempt comes after the client's backoff (at most 10 s).
    expect(status).to_have_text(re.compile("^connected over (websocket|ajax)$"), timeout=20_000)
    sender.say("after the page came back")
    expect(log).to_have_text(lines("before the restart", "while the page was away 1",
                                   "while the page was away 2", "after the page came back"))
    sender.leave()
    assert page.errors == []
