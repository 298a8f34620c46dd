"""
JSON and JSONP over HTTP, done once for every Ajax resource: callback
validation, headers, CORS and its preflight, errors as JSON, 404 and 405,
bounded request bodies, and asynchronous handlers.

A resource subclasses L{JSONResource}, lists its C{methods} and implements
C{handle(request)} returning a JSON-able value (or a Deferred of one), or
raising L{HTTPError}. It never writes to the request itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from appserver._server.app import HTTPError
from appserver._core.envelope import encode

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["JSONResource", "RawJSON", "Rendered", "write_json", "JSONErrorPage", "HTTPError",
           "jsonp_callback", "CALLBACK_PATTERN", "MAX_CALLBACK_LENGTH", "query_arg", "set_cors"]

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.ajax")

MAX_CALLBACK_LENGTH = 128
#: A JavaScript identifier, or a dotted path of them (C{App.handlers.onCount}).
CALLBACK_PATTERN = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*\Z")

_JSON = b"application/json; charset=utf-8"
_JAVASCRIPT = b"application/javascript; charset=utf-8"


def query_arg(request: Request, name: str) -> str | None:
    """
    The first value of a query argument, decoded as UTF-8 (C{None} when
    absent).

    @raise HTTPError: 400 when the value is not UTF-8.
    """
    values = request.args.get(name.encode("utf-8"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_request", f"query argument {name!r} is not UTF-8") from None


def jsonp_callback(request: Request) -> str | None:
    """
    The validated JSONP callback name, or C{None} for a plain JSON request.

    @raise HTTPError: 400 for a name that is not a (dotted) JavaScript
        identifier of at most L{MAX_CALLBACK_LENGTH} characters.
    """
    values = request.args.get(b"callback")
    if not values:
        return None
    raw = values[0]
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if len(name) > MAX_CALLBACK_LENGTH or not CALLBACK_PATTERN.match(name):
        raise HTTPError(400, "bad_callback",
                        f"callback must be a JavaScript identifier or dotted path of at most "
                        f"{MAX_CALLBACK_LENGTH} characters")
    return name


def _origin_allowed(request: Request, runtime: "Runtime") -> bool:
    """
    Whether the request's page (its Origin header) may use this server; a
    request without one (not from a page) may.
    """
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host")
    return runtime.origins.allows(origin.decode("latin-1"), host.decode("latin-1") if host else None)


def set_cors(request: Request, runtime: "Runtime") -> bool:
    """
    Add CORS headers when the request's origin may read the answer;
    returns whether it may.
    """
    if not _origin_allowed(request, runtime):
        return False
    origin = request.getHeader(b"origin")
    if origin is not None:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Vary", b"Origin")
    return True


def write_json(request: Request, runtime: "Runtime | None", payload: Any, status: int = 200,
               callback: str | None = None) -> bytes:
    """
    Serialize an answer as JSON, or JSONP when C{callback} is given. A JSONP
    error still answers 200 (a script that fails to load tells its page
    nothing) and carries the status in the object. Without a C{runtime}
    (pages outside any endpoint) no CORS headers are added.
    """
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    body = payload.body if isinstance(payload, RawJSON) else None
    if callback is not None:
        if status != 200 and isinstance(payload, dict):
            payload = {**payload, "status": status}
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", _JAVASCRIPT)
        # U+2028/2029 are valid in JSON but ended a statement in JavaScript
        # before ES2019: escape them so older engines parse the callback.
        json_body = (body or encode(payload)).replace(b"\xe2\x80\xa8", b"\\u2028").replace(
            b"\xe2\x80\xa9", b"\\u2029")
        return b"/**/" + callback.encode("ascii") + b"(" + json_body + b");"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", _JSON)
    if runtime is not None:
        set_cors(request, runtime)
    return body or encode(payload)


class Rendered:
    """
    Returned by C{handle} when it has already produced the whole response
    body and headers.
    """

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


class RawJSON:
    """
    An answer already serialized (for example a long poll's messages, each
    serialized once for all sessions): sent as is, or wrapped for JSONP.
    """

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class JSONErrorPage(Resource):
    """
    A JSON error for any method: the Ajax site's 404.
    """

    isLeaf = True

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__()
        self.status = status
        self.code = code
        self.message = message

    def render(self, request: Request) -> bytes:
        try:
            callback = jsonp_callback(request)
        except HTTPError:
            callback = None
        # A JSONP caller only sees what reaches its callback.
        body = write_json(request, None, _error_body(self.code, self.message), self.status, callback)
        return b"" if request.method == b"HEAD" else body


class JSONResource(Resource):
    """
    Base of every Ajax endpoint.

    @cvar methods: the HTTP methods C{handle} serves (C{HEAD} follows
        C{GET}; C{OPTIONS} is the CORS preflight).
    @cvar check_origin: refuse (403) requests whose Origin is not allowed,
        for endpoints that change state; read-only ones merely omit the
        CORS headers so the browser hides the answer.
    @cvar allowed_headers: the request headers a page may send (the
        preflight's C{Access-Control-Allow-Headers}).
    """

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET",)
    check_origin = False
    #: Cancel a pending answer when the caller goes away (for work nobody
    #: would learn the result of, like opening a session).
    cancel_when_gone = False
    allowed_headers = b"Content-Type, Authorization, X-AppServer-Session, X-AppServer-Since"

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__()
        self.runtime = runtime

    def handle(self, request: Request) -> Any:
        """
        Answer the request: a JSON-able value, a Deferred or coroutine of
        one, a L{Rendered} body, or C{NOT_DONE_YET} when the resource keeps
        the request to answer it itself (a long poll).
        """
        raise NotImplementedError

    def render(self, request: Request) -> bytes | int:
        if request.postpath and request.postpath != [b""]:
            return JSONErrorPage(404, "not_found", "no such endpoint").render(request)
        method = request.method
        if method == b"OPTIONS":
            return self._preflight(request)
        allowed = self.methods + ((b"HEAD",) if b"GET" in self.methods else ())
        if method not in allowed:
            request.setHeader(b"Allow", b", ".join(allowed + (b"OPTIONS",)))
            return self._error(request, None, 405, "method_not_allowed",
                               f"use {' or '.join(m.decode() for m in self.methods)}")
        try:
            callback = jsonp_callback(request)
        except HTTPError as error:
            return self._error(request, None, error.status, error.code, error.message)
        if getattr(request, "too_large", False):
            return self._error(request, callback, 413, "too_large",
                               f"the body is larger than {self.runtime.settings.max_message_size} bytes")
        if self.check_origin and not _origin_allowed(request, self.runtime):
            self._log_refused_origin(request)
            return self._error(request, callback, 403, "origin_refused", "this origin may not use this server")
        try:
            result = self.handle(request)
        except HTTPError as error:
            return self._error(request, callback, error.status, error.code, error.message)
        except Exception:
            _log.failure("Ajax endpoint {path} failed", path=request.path.decode("latin-1"))
            return self._error(request, callback, 500, "internal_error", "the server failed; the error was logged")
        if result is NOT_DONE_YET:
            return NOT_DONE_YET
        if isinstance(result, Rendered):
            return self._body(request, result.body)
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            self._finish_later(request, callback, ensureDeferred(result))
            return NOT_DONE_YET
        return self._body(request, write_json(request, self.runtime, result, 200, callback))

    def _finish_later(self, request: Request, callback: str | None, result: Deferred[Any]) -> None:
        finished: list[bool] = []

        def ended(outcome: object) -> None:
            finished.append(True)
            if isinstance(outcome, Failure) and self.cancel_when_gone:
                # Marked finished first: the cancellation's failure must not
                # be written to a connection that is gone.
                result.cancel()

        request.notifyFinish().addBoth(ended)

        def succeeded(value: Any) -> None:
            if finished:
                return
            request.write(self._body(request, write_json(request, self.runtime, value, 200, callback)))
            request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                return
            error = failure.value
            if isinstance(error, HTTPError):
                body = self._error(request, callback, error.status, error.code, error.message)
            else:
                _log.failure("Ajax endpoint {path} failed", failure, path=request.path.decode("latin-1"))
                body = self._error(request, callback, 500, "internal_error",
                                   "the server failed; the error was logged")
            request.write(body)
            request.finish()

        result.addCallbacks(succeeded, failed)

    def _error(self, request: Request, callback: str | None, status: int, code: str, message: str) -> bytes:
        return self._body(request, write_json(request, self.runtime, _error_body(code, message), status, callback))

    @staticmethod
    def _body(request: Request, body: bytes) -> bytes:
        return b"" if request.method == b"HEAD" else body

    def _log_refused_origin(self, request: Request) -> None:
        """
        One line saying which origin was refused and which option would
        accept it.
        """
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        host = request.getHeader(b"host")
        _log.warn("refused {method} {path} from origin {origin!r}; {advice}",
                  method=request.method.decode("latin-1"), path=request.path.decode("latin-1"), origin=origin,
                  advice=self.runtime.origins.advice(origin, host.decode("latin-1") if host else None))

    def _preflight(self, request: Request) -> bytes:
        request.setHeader(b"Cache-Control", b"no-store")
        if request.getHeader(b"origin") is not None and not set_cors(request, self.runtime):
            self._log_refused_origin(request)
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", _JSON)
            return encode(_error_body("origin_refused", "this origin may not use this server"))
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", b", ".join(self.methods + (b"OPTIONS",)))
        request.setHeader(b"Access-Control-Allow-Headers", self.allowed_headers)
        # As long as browsers keep a preflight (Chromium: two hours): a
        # session's requests are preflighted once per URL and per period.
        request.setHeader(b"Access-Control-Max-Age", b"7200")
        request.setHeader(b"Allow", b", ".join(self.methods + (b"OPTIONS",)))
        return b""
