"""
Health endpoints for load balancers and orchestrators, on the Ajax site.

C{GET /healthz} (liveness) answers 200 whenever the reactor turns: a
process that stops answering it should be restarted. C{GET /readyz}
(readiness) answers 200 only when this server should get new clients: every
site listening, not shutting down, and every check registered in
C{runtime.readiness_checks} passing (the service registers the listening
check; a backplane adds its own reachability check). Otherwise 503 with the
reasons, so a rolling deploy drains a node before it goes away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from appserver._core.envelope import encode
from appserver._server.metrics import MetricsResource

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["Liveness", "Readiness", "ReadinessCheck", "mount_operations_resources", "CHECK_TIMEOUT"]

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.health")

#: A readiness check that takes longer than this many seconds counts as failed.
CHECK_TIMEOUT = 5.0

#: A readiness check: returns the reasons the server is not ready (empty when
#: it is), or a Deferred or coroutine of them.
ReadinessCheck = Callable[[], Any]


def _answer(request: Request, status: int, payload: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return encode(payload)


class Liveness(Resource):
    """
    C{GET /healthz}: C{{"status": "ok"}} while the reactor runs. Checks
    nothing else on purpose: a liveness failure gets the process killed,
    which must not happen because a dependency is down.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _answer(request, 200, {"status": "ok"})


class Readiness(Resource):
    """
    C{GET /readyz}: C{{"status": "ready"}} (200) or C{{"status":
    "unavailable", "reasons": [...]}} (503).
    """

    isLeaf = True

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__()
        self.runtime = runtime

    def render_GET(self, request: Request) -> bytes | int:
        runtime = self.runtime
        reasons: list[str] = []
        if not runtime.accepting:
            reasons.append("shutting down: not accepting new clients")
        synchronous = True
        immediate: list[bytes] = []
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def done(results: list[list[str]]) -> None:
            body = self._render(request, reasons + [reason for found in results for reason in found])
            if synchronous:
                immediate.append(body)
            elif not finished:
                request.write(body)
                request.finish()

        # Every check's errors are already turned into reasons by _run.
        gatherResults([self._run(check) for check in runtime.readiness_checks]).addCallback(done)
        synchronous = False
        return immediate[0] if immediate else NOT_DONE_YET

    def _run(self, check: ReadinessCheck) -> Deferred[list[str]]:
        result = maybeDeferred(lambda: _as_deferred(check()))
        result.addTimeout(CHECK_TIMEOUT, self.runtime.reactor,
                          onTimeoutCancel=lambda *_: [f"readiness check {_name(check)} timed out "
                                                      f"after {CHECK_TIMEOUT:g}s"])

        def failed(failure: Failure) -> list[str]:
            _log.failure("readiness check {check} failed", failure, check=_name(check))
            return [f"readiness check {_name(check)} failed: {failure.getErrorMessage()}"]

        return result.addCallbacks(_reasons, failed)

    @staticmethod
    def _render(request: Request, reasons: list[str]) -> bytes:
        if reasons:
            return _answer(request, 503, {"status": "unavailable", "reasons": reasons})
        return _answer(request, 200, {"status": "ready"})


def _as_deferred(value: Any) -> Any:
    if hasattr(value, "__await__") and not isinstance(value, Deferred):
        return Deferred.fromCoroutine(value)
    return value


def _reasons(found: Iterable[str] | str | None) -> list[str]:
    if not found:
        return []
    if isinstance(found, str):
        return [found]
    return [str(reason) for reason in found]


def _name(check: ReadinessCheck) -> str:
    return getattr(check, "__qualname__", None) or getattr(check, "__name__", None) or repr(check)


def mount_operations_resources(root: Resource, runtime: "Runtime") -> None:
    """
    Put C{/healthz}, C{/readyz} and C{/metrics} under the Ajax site's root.
    """
    root.putChild(b"healthz", Liveness())
    root.putChild(b"readyz", Readiness(runtime))
    root.putChild(b"metrics", MetricsResource(runtime))
