"""
The Ajax site: request/response calls in JSON or JSONP, and the long-poll
transport (connect, send, poll, disconnect) that carries the same envelopes
as the WebSocket through the same dispatcher.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from appserver._server.app import HTTPError, Route, RouteRequest
from appserver._server.coroutines import as_deferred, is_async
from appserver._core.client import Client
from appserver._core.envelope import ProtocolError, parse_envelope, parse_json, validate_envelope
from appserver._web.jsonweb import JSONErrorPage, JSONResource, Rendered, jsonp_callback, query_arg
from appserver._server.admission import Ticket, Visitor, refused_from
from appserver._web.longpoll import AjaxSession
from appserver._core.names import validate_channel_name, validate_idempotency_key, validate_room_name
from appserver._server.proxies import HeaderReader, TrustedProxies, is_local

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["AjaxRoot", "AppRoute", "ClientCount", "Connect", "Disconnect", "Poll", "Publish", "Send", "visitor_from_request"]


def _peer(request: Request) -> str:
    """
    The client's address written as Autobahn writes WebSocket peers
    (C{tcp4:127.0.0.1:50996}), so chat lines look the same on every transport.
    """
    address = request.getClientAddress()
    if isinstance(address, IPv4Address):
        return f"tcp4:{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"tcp6:{address.host}:{address.port}"
    return str(address)


def _json_body(request: Request) -> Any:
    """
    The request's JSON body, at most C{MAX_JSON_DEPTH} levels deep.

    @raise HTTPError: 400 C{bad_json}.
    """
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise HTTPError(400, "bad_json", "the request body must be JSON")
    try:
        return parse_json(raw, "request body")
    except ProtocolError as error:
        raise HTTPError(400, error.code, error.message) from None


def _header_reader(request: Request) -> HeaderReader:
    """
    Reads a request header by its lower-case name, as L{TrustedProxies}
    and L{is_local} want it.
    """
    def header(name: str) -> str | None:
        value = request.getHeader(name.encode("ascii"))
        return value.decode("latin-1") if value is not None else None
    return header


class ClientCount(JSONResource):
    """
    C{GET /get_client_count}: the original demo's call, with the breakdown
    by transport and, with C{?room=R}, that room's size.
    """

    def handle(self, request: Request) -> Any:
        tracker = self.runtime.tracker
        room = query_arg(request, "room")
        if room is not None:
            try:
                validate_room_name(room)
            except ProtocolError as error:
                raise HTTPError(400, error.code, error.message) from None
        return self._answer(room)

    async def _answer(self, room: str | None) -> dict[str, Any]:
        """
        The clients of every live node (this node's alone on a single
        node); C{nodes} says how many nodes answered for, when clustered
        (docs/scaling.md).
        """
        tracker = self.runtime.tracker
        counts = dict(await tracker.cluster_counts())
        nodes = counts.pop("nodes", None)
        answer: dict[str, Any] = {
            "client_count": sum(counts.values()),
            "websocket": counts.get("websocket", 0),
            "ajax": counts.get("ajax", 0),
            "sse": counts.get("sse", 0),
        }
        if tracker.backplane.clustered:
            answer["nodes"] = nodes if nodes is not None else 1
        answer["time"] = time.ctime()
        if room is not None:
            answer["room"] = room
            answer["room_count"] = await tracker.room_size(room)
        return answer


#: The request header that carries an Ajax session's secret (JSON requests).
SESSION_HEADER = "X-AppServer-Session"


def _session_secret(request: Request) -> str:
    """
    The session secret a request presents: in the C{X-AppServer-Session}
    header for JSON, in the C{session} query argument for JSONP (a script
    tag cannot send headers). Kept out of URLs wherever possible: URLs end
    up in logs, proxies and browser history.
    """
    if request.args.get(b"callback"):
        values = request.args.get(b"session")
        raw = values[0] if values else b""
    else:
        raw = request.getHeader(SESSION_HEADER.encode("ascii")) or b""
    return raw.decode("utf-8", "replace").strip()


class _SessionResource(JSONResource):
    """
    Base of the endpoints that act on an existing session.
    """

    check_origin = True

    def render(self, request: Request) -> bytes | int:
        # A session opened by another node of the cluster: its home node
        # answers (docs/scaling.md).
        if request.method != b"OPTIONS":
            secret = _session_secret(request)
            if secret and self.runtime.sessions.find(secret) is None:
                routed = self.runtime.tracker.backplane.route_session_request(self, request, secret)
                if routed is not None:
                    return routed
        return super().render(request)

    def routed_error(self, request: Request, status: int, code: str, message: str) -> bytes:
        """
        An error answer written for a request routed to another node.
        """
        try:
            callback = jsonp_callback(request)
        except HTTPError:
            callback = None
        return self._error(request, callback, status, code, message)

    def _session(self, request: Request) -> Client:
        """
        The Ajax session or event stream whose secret the request presents.

        @raise HTTPError: 400 C{missing_session}, 410 C{unknown_session}.
        """
        # A request another node routed here carries the secret's digest,
        # never the secret (appserver._redis.routing.RoutedRequest).
        routed_digest: bytes = getattr(request, "session_digest", b"")
        if routed_digest:
            found = self.runtime.sessions.find_digest(routed_digest)
            if found is None:
                raise HTTPError(410, "unknown_session",
                                "this session expired or never existed: call /connect again, then resume")
            return found
        secret = _session_secret(request)
        if not secret:
            if jsonp_callback(request) is None:
                raise HTTPError(400, "missing_session", f"send the session from /connect (or an event stream's "
                                                        f"welcome) in the {SESSION_HEADER} header "
                                                        "(session=<secret> in the query is for JSONP only)")
            raise HTTPError(400, "missing_session", "the query needs session=<secret> from /connect")
        session = self.runtime.sessions.find(secret)
        if session is None:
            raise HTTPError(410, "unknown_session",
                            "this session expired or never existed: call /connect again, then resume")
        return session


class Connect(JSONResource):
    """
    C{POST /connect} (or C{GET /connect?callback=} for JSONP): open a
    session.
    """

    methods = (b"GET", b"POST")
    # The origin is checked by admission, as for every transport.
    check_origin = False
    # The caller left while the application decided: nobody would learn the
    # session, so stop deciding and give the place back.
    cancel_when_gone = True

    def handle(self, request: Request) -> Any:
        if request.method != b"POST" and jsonp_callback(request) is None:
            # As for /send and /disconnect: a plain GET (an <img>, a prefetch) opens nothing.
            request.setHeader(b"Allow", b"POST, OPTIONS")
            raise HTTPError(405, "method_not_allowed", "use POST, or GET with callback= for JSONP")
        admitting = self.runtime.admission.admit(visitor_from_request(request, self.runtime.proxies))
        return admitting.addCallbacks(self._open, _refused)

    def _open(self, ticket: Ticket) -> dict[str, Any]:
        runtime = self.runtime
        session, secret = runtime.sessions.open(ticket)
        return {"session": secret, "client_id": session.client_id,
                "epoch": runtime.tracker.epoch, "position": 0}


def visitor_from_request(request: Request, proxies: TrustedProxies, transport: str = "ajax") -> Visitor:
    """
    A request that opens an Ajax session (or, with C{transport="sse"}, an
    event stream), as admission sees it: its address is the client's,
    behind a C{--trusted-proxy} too.
    """
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    address = request.getClientAddress()
    return Visitor(
        transport=transport, peer=_peer(request),
        ip=proxies.client_address(getattr(address, "host", str(address)), _header_reader(request)),
        origin=origin.decode("latin-1") if origin else None, host=host.decode("latin-1") if host else None,
        path=request.path.decode("latin-1"),
        query={key.decode("latin-1"): [v.decode("latin-1") for v in values] for key, values in request.args.items()},
        headers={key.decode("latin-1").lower(): b",".join(values).decode("latin-1")
                 for key, values in request.requestHeaders.getAllRawHeaders()},
        cookies={key.decode("latin-1"): value.decode("latin-1")
                 for key, value in (request.received_cookies or {}).items()})


def _refused(failure: Failure) -> None:
    refused = refused_from(failure)
    raise HTTPError(refused.status, refused.code, refused.message)


class Send(_SessionResource):
    """
    C{POST /send} (session secret in C{X-AppServer-Session}) with an
    envelope as the body, or C{GET /send?session=S&msg=<envelope>&callback=}
    for JSONP.
    """

    methods = (b"GET", b"POST")

    def handle(self, request: Request) -> dict[str, Any]:
        if request.method == b"GET":
            if jsonp_callback(request) is None:
                request.setHeader(b"Allow", b"POST, OPTIONS")
                raise HTTPError(405, "method_not_allowed", "use POST, or GET with callback= for JSONP")
            raw = query_arg(request, "msg")
            if raw is None:
                raise HTTPError(400, "bad_envelope", "the query needs msg=<envelope JSON>")
            if len(raw) > self.runtime.settings.max_message_size:
                raise HTTPError(413, "too_large", "the message is too large")
            session = self._session(request)
            try:
                envelope = parse_envelope(raw)
            except ProtocolError as error:
                raise HTTPError(400, error.code, error.message) from None
        else:
            session = self._session(request)
            try:
                envelope = validate_envelope(_json_body(request))
            except ProtocolError as error:
                raise HTTPError(400, error.code, error.message) from None
        if isinstance(session, AjaxSession):
            session.touch()
        self.runtime.dispatcher.dispatch(session, envelope)
        return {"ok": True}


#: The request header that carries a JSON poll's cursor.
SINCE_HEADER = "X-AppServer-Since"


def _poll_cursor(request: Request) -> str | None:
    """
    The C{since} of a poll: the C{X-AppServer-Since} header, else the
    query. The JavaScript client uses the header, so that every poll of a
    session has the same URL and the browser's CORS preflight cache (one
    entry per URL) spares a preflight per poll.
    """
    header = request.getHeader(SINCE_HEADER.encode("ascii"))
    if header is not None and jsonp_callback(request) is None:
        return header.decode("latin-1")
    return query_arg(request, "since")


class Poll(_SessionResource):
    """
    C{GET /poll} with the session secret in C{X-AppServer-Session} and
    C{since} in C{X-AppServer-Since} (or the query), or
    C{GET /poll?session=S&since=N&callback=} for JSONP: the long poll.
    """

    check_origin = False  # read-only: CORS headers decide who may read it

    def handle(self, request: Request) -> Any:
        session = self._session(request)
        if not isinstance(session, AjaxSession):
            raise HTTPError(409, "not_pollable", "this secret belongs to an event stream: its messages arrive on "
                                                  "the stream (GET /events), not by /poll")
        queue = session.queue
        assert queue is not None
        try:
            since = int(_poll_cursor(request) or "0")
        except ValueError:
            raise HTTPError(400, "bad_since", "since must be the position of the last poll answer") from None
        if not 0 <= since <= queue.last_seq:
            raise HTTPError(400, "bad_since", f"since must be between 0 and {queue.last_seq}")
        body = session.poll(request, since, jsonp_callback(request))
        return NOT_DONE_YET if body is None else Rendered(body)


class Disconnect(_SessionResource):
    """
    C{POST /disconnect} (or JSONP C{GET ?session=S&callback=}): end a
    session now rather than at expiry.
    """

    methods = (b"GET", b"POST")

    def handle(self, request: Request) -> dict[str, Any]:
        if request.method != b"POST" and jsonp_callback(request) is None:
            request.setHeader(b"Allow", b"POST, OPTIONS")
            raise HTTPError(405, "method_not_allowed", "use POST, or GET with callback= for JSONP")
        self._session(request).close(1000, "client disconnected")
        return {"ok": True}


class Publish(JSONResource):
    """
    C{POST /publish} with C{{"channel": C, "data": D}}: lets other programs
    push to browsers. Needs C{Authorization: Bearer <--publish-token>}; with
    no token configured only local callers may publish: from loopback, and
    through no proxy (L{is_local}).
    """

    methods = (b"POST",)
    # A page from an origin that may not use this server is refused (403)
    # before anything else, token or not.
    check_origin = True

    def handle(self, request: Request) -> Deferred[dict[str, Any]]:
        self._authorize(request)
        body = _json_body(request)
        if not isinstance(body, dict) or "channel" not in body:
            raise HTTPError(400, "bad_data", 'the body must be {"channel": C, "data": D}')
        try:
            channel = validate_channel_name(body["channel"])
        except ProtocolError as error:
            raise HTTPError(400, error.code, error.message) from None
        key = body.get("key")
        if key is not None and not isinstance(key, (str, int)):
            raise HTTPError(400, "bad_data", '"key" must be a string or an integer')
        idempotency_key = _idempotency_key(request, body)
        tracker = self.runtime.tracker
        # Subscribers on every node (docs/scaling.md: the others' as of their last heartbeat).
        return tracker.publish(channel, body.get("data"), key=key, idempotency_key=idempotency_key).addCallback(
            lambda published: tracker.channel_subscribers(channel).addCallback(lambda subscribers: {
                "ok": True, "pos": published.pos, "subscribers": subscribers}))

    def _authorize(self, request: Request) -> None:
        token = self.runtime.settings.publish_token
        if token is None:
            address = request.getClientAddress()
            if not is_local(str(getattr(address, "host", "")), _header_reader(request)):
                # Behind a proxy every request comes from loopback: one that
                # says it was forwarded came from elsewhere.
                raise HTTPError(403, "forbidden", "publishing from other hosts, or through a proxy, needs "
                                                  "--publish-token")
            if request.getHeader(b"origin") is not None:
                # A web page (any site, in a browser on this machine) can
                # send a simple cross-origin POST without a preflight; local
                # programs send no Origin. Pages publish through a client's
                # publish (allow_publish rules) or with the token.
                raise HTTPError(403, "forbidden", "publishing from a web page needs --publish-token")
            return
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="appserver"')
            raise HTTPError(401, "unauthorized", "send Authorization: Bearer <publish token>")


def _idempotency_key(request: Request, body: dict[str, Any]) -> str | None:
    """
    The idempotency key of a C{POST /publish}: the body's
    C{"idempotency_key"} or the C{Idempotency-Key} header (the same when
    both are given).

    @raise HTTPError: 400 C{bad_data} for a bad key, or two different ones.
    """
    header = request.getHeader(b"idempotency-key")
    try:
        given = validate_idempotency_key(body.get("idempotency_key"))
        from_header = None if header is None else validate_idempotency_key(header.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_data", "the Idempotency-Key header is not UTF-8") from None
    except ProtocolError as error:
        raise HTTPError(400, error.code, error.message) from None
    if given is not None and from_header is not None and given != from_header:
        raise HTTPError(400, "bad_data", "the Idempotency-Key header and the body's idempotency_key differ")
    return given if given is not None else from_header


class AppRoute(JSONResource):
    """
    An application's own Ajax route.
    """

    def __init__(self, runtime: "Runtime", route: Route) -> None:
        super().__init__(runtime)
        self.route = route
        self.methods = tuple(m.encode("ascii") for m in route.methods)

    def handle(self, request: Request) -> Any:
        args: dict[str, str] = {}
        for key in request.args:
            name = key.decode("utf-8", "replace")
            value = query_arg(request, name)
            if value is not None and name not in ("callback", "_"):
                args[name] = value
        body = _json_body(request) if request.method == b"POST" else None
        result = self.route.handler(RouteRequest(args, body, self.runtime.tracker, request, self.runtime.reactor))
        # A coroutine may await asyncio code and Deferreds alike.
        return as_deferred(result, self.runtime.reactor) if is_async(result) else result


class AjaxRoot(Resource):
    """
    The Ajax site's root: known endpoints, else a JSON 404.
    """

    def getChild(self, name: bytes, request: Request) -> Resource:
        return JSONErrorPage(404, "not_found", "no such endpoint; see docs/protocol.md")

    def render(self, request: Request) -> bytes:
        return JSONErrorPage(404, "not_found", "no such endpoint; see docs/protocol.md").render(request)
