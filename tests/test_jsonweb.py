"""
JSON and JSONP over HTTP, shared by every Ajax endpoint: callback
validation, headers, CORS and its preflight, JSON 404 and 405, bounded
bodies. Through the real Site and Request in memory (StubTreq).
"""

import pytest

from support.wsclient import AJAX_PORT, STATIC_PORT, AjaxStub, make_runtime

OWN_ORIGIN = f"http://127.0.0.1:{STATIC_PORT}"
FOREIGN_ORIGIN = "http://evil.example:9000"


@pytest.fixture
def ajax():
    return AjaxStub(make_runtime(max_message_size=1000))


def assert_json_error(answer, status, code):
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.json()["error"]["code"] == code


@pytest.mark.parametrize("callback", ["cb", "jQuery371_1700000000000", "a.b.c", "$x", "_", "$", "x" * 128,
                                      "App.handlers.onCount"])
def test_a_valid_callback_gets_jsonp(ajax, callback):
    answer = ajax.call("GET", "/get_client_count", {"callback": callback})
    assert answer.status == 200
    assert answer.jsonp(callback)["client_count"] == 0


@pytest.mark.parametrize("callback", ["", "1abc", "a..b", "a-b", "alert(1)", "a[0]", "caf\u00e9", "x" * 129,
                                      ".a", "a.", "a b", "a;b", "a\nb", "a.1b", "</script>"])
def test_an_invalid_callback_is_a_json_400(ajax, callback):
    answer = ajax.call("GET", "/get_client_count", {"callback": callback})
    assert_json_error(answer, 400, "bad_callback")


def test_a_callback_that_is_not_utf8_is_a_json_400(ajax):
    answer = ajax.call("GET", "/get_client_count?callback=%ff%fe")
    assert_json_error(answer, 400, "bad_callback")


def test_jsonp_headers_and_body_prefix(ajax):
    answer = ajax.call("GET", "/get_client_count", {"callback": "cb"})
    assert answer.body.startswith(b"/**/cb(")
    assert answer.headers["content-type"] == "application/javascript; charset=utf-8"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_json_headers(ajax):
    answer = ajax.call("GET", "/get_client_count")
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def test_a_jsonp_error_is_delivered_through_the_callback_with_its_status(ajax):
    answer = ajax.call("GET", "/poll", {"callback": "cb", "session": "nope"})
    assert answer.status == 200
    body = answer.jsonp("cb")
    assert body["status"] == 410 and body["error"]["code"] == "unknown_session"


def test_json_for_the_servers_own_pages_carries_cors(ajax):
    answer = ajax.call("GET", "/get_client_count", headers={"Origin": OWN_ORIGIN})
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == OWN_ORIGIN
    assert answer.headers["vary"] == "Origin"


def test_json_for_a_foreign_origin_carries_no_cors(ajax):
    answer = ajax.call("GET", "/get_client_count", headers={"Origin": FOREIGN_ORIGIN})
    assert answer.status == 200
    assert "access-control-allow-origin" not in answer.headers


def test_a_port_the_server_does_not_listen_on_is_foreign(ajax):
    answer = ajax.call("GET", "/get_client_count", headers={"Origin": "http://127.0.0.1:8080"})
    assert "access-control-allow-origin" not in answer.headers


def test_a_configured_origin_gets_cors():
    ajax = AjaxStub(make_runtime(allowed_origin=("https://*.example.com",)))
    answer = ajax.call("GET", "/get_client_count", headers={"Origin": "https://app.example.com"})
    assert answer.headers["access-control-allow-origin"] == "https://app.example.com"


def test_preflight_for_an_own_origin_is_204_with_the_allow_headers(ajax):
    answer = ajax.call("OPTIONS", "/send", headers={"Origin": OWN_ORIGIN,
                                                    "Access-Control-Request-Method": "POST"})
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == OWN_ORIGIN
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "Content-Type" in answer.headers["access-control-allow-headers"]
    assert answer.body == b""


def test_preflight_for_a_foreign_origin_is_403(ajax):
    answer = ajax.call("OPTIONS", "/send", headers={"Origin": FOREIGN_ORIGIN,
                                                    "Access-Control-Request-Method": "POST"})
    assert_json_error(answer, 403, "origin_refused")
    assert "access-control-allow-origin" not in answer.headers


def test_options_without_origin_is_204(ajax):
    assert ajax.call("OPTIONS", "/connect").status == 204


@pytest.mark.parametrize("path", ["/", "/nope", "/get_client_count/extra", "/connect/x/y", "/.git/config",
                                  "/../setup.cfg"])
def test_an_unknown_path_is_a_json_404(ajax, path):
    assert_json_error(ajax.call("GET", path), 404, "not_found")


def test_an_unknown_path_on_head_is_404_without_body(ajax):
    answer = ajax.call("HEAD", "/nope")
    assert answer.status == 404 and answer.body == b""


@pytest.mark.parametrize("method, path, allowed", [
    ("POST", "/get_client_count", {"GET", "HEAD", "OPTIONS"}),
    ("DELETE", "/connect", {"GET", "POST", "HEAD", "OPTIONS"}),
    ("PUT", "/poll", {"GET", "HEAD", "OPTIONS"}),
    ("GET", "/publish", {"POST", "OPTIONS"}),
])
def test_a_wrong_method_is_405_with_allow(ajax, method, path, allowed):
    answer = ajax.call(method, path)
    assert_json_error(answer, 405, "method_not_allowed")
    assert {m.strip() for m in answer.headers["allow"].split(",")} == allowed


def test_get_send_without_callback_is_405_with_allow(ajax):
    session = ajax.connect()
    answer = ajax.call("GET", "/send", {"session": session, "msg": '{"type":"ping"}'})
    assert_json_error(answer, 405, "method_not_allowed")
    assert "POST" in answer.headers["allow"]


def test_head_follows_get_without_a_body(ajax):
    answer = ajax.call("HEAD", "/get_client_count")
    assert answer.status == 200 and answer.body == b""


def test_an_oversized_post_body_is_413(ajax):
    session = ajax.connect()
    body = b'{"type":"chat","data":"' + b"x" * 2000 + b'"}'
    answer = ajax.call("POST", "/send", {"session": session}, body)
    assert_json_error(answer, 413, "too_large")


def test_an_oversized_body_is_413_even_on_connect(ajax):
    assert_json_error(ajax.call("POST", "/connect", body=b"x" * 5000), 413, "too_large")


def test_a_body_at_the_limit_is_accepted(ajax):
    session = ajax.connect()
    envelope = b'{"type":"chat","data":"'
    body = envelope + b"x" * (1000 - len(envelope) - 2) + b'"}'
    assert len(body) == 1000
    assert ajax.call("POST", "/send", {"session": session}, body).status == 200


def test_an_oversized_jsonp_message_is_413_through_the_callback(ajax):
    session = ajax.connect()
    msg = '{"type":"chat","data":"' + "x" * 2000 + '"}'
    answer = ajax.call("GET", "/send", {"session": session, "msg": msg, "callback": "cb"})
    body = answer.jsonp("cb")
    assert body["status"] == 413 and body["error"]["code"] == "too_large"


def test_an_error_never_carries_a_traceback(ajax):
    from appserver._server.app import App
    from twisted.logger import capturedLogs
    app = App()

    @app.route("/crash")
    def crash(request):
        raise RuntimeError("secret detail")

    ajax = AjaxStub(make_runtime(app=app))
    with capturedLogs():
        answer = ajax.call("GET", "/crash")
    assert_json_error(answer, 500, "internal_error")
    assert b"secret" not in answer.body and b"Traceback" not in answer.body


def test_an_app_route_answers_json_jsonp_and_http_errors():
    from appserver._server.app import App, HTTPError
    app = App()

    @app.route("/price", methods=("GET", "POST"))
    def price(request):
        if request.args.get("symbol") == "bad":
            raise HTTPError(422, "bad_symbol", "unknown symbol")
        return {"symbol": request.args.get("symbol"), "body": request.body}

    ajax = AjaxStub(make_runtime(app=app))
    assert ajax.call("GET", "/price", {"symbol": "EUR"}).json() == {"symbol": "EUR", "body": None}
    assert ajax.call("POST", "/price", {"symbol": "EUR"}, b'{"a": 1}').json() == {"symbol": "EUR",
                                                                                   "body": {"a": 1}}
    assert ajax.call("GET", "/price", {"symbol": "EUR", "callback": "cb"}).jsonp("cb")["symbol"] == "EUR"
    assert_json_error(ajax.call("GET", "/price", {"symbol": "bad"}), 422, "bad_symbol")


def test_an_async_app_route_answers_when_done():
    from twisted.internet import defer
    from appserver._server.app import App
    app = App()
    waiting = defer.Deferred()

    @app.route("/later")
    def later(request):
        return waiting

    ajax = AjaxStub(make_runtime(app=app))
    pending = ajax.start("GET", "/later")
    ajax.flush()
    from support.wsclient import has_fired, resolved
    assert not has_fired(pending)
    waiting.callback({"ok": 1})
    ajax.flush()
    assert resolved(pending).json() == {"ok": 1}


def test_the_host_header_decides_what_own_means(ajax):
    answer = ajax.call("GET", "/get_client_count",
                       headers={"Origin": f"http://127.0.0.1:{AJAX_PORT}", "Host": "other.host:9001"})
    assert "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_connect_without_callback_by_get_or_head_is_405_and_opens_nothing(ajax, method):
    answer = ajax.call(method, "/connect")
    assert answer.status == 405 and "POST" in answer.headers["allow"]
    assert ajax.runtime.tracker.client_count == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_disconnect_without_callback_by_get_or_head_is_405_with_allow(ajax, method):
    session = ajax.connect()
    answer = ajax.call(method, "/disconnect", {"session": session})
    assert answer.status == 405
    assert "POST" in answer.headers["allow"]
    assert ajax.runtime.tracker.client_count == 1


def test_an_app_route_gets_utf8_query_names_and_skips_undecodable_ones():
    from appserver._server.app import App
    app = App()

    @app.route("/echo")
    def echo(request):
        return request.args

    ajax = AjaxStub(make_runtime(app=app))
    answer = ajax.call("GET", "/echo?caf%C3%A9=1&x=2&bad%ff=3&callback=cb")
    assert answer.jsonp("cb") == {"caf\u00e9": "1", "x": "2"}
