"""
Admission and life cycle of a connection, written once for every transport.

Whatever carries a client (a WebSocket, an Ajax session, a stream of
events), it passes the same three steps, so the rules and the log lines are
the same whichever way it came in:

  1. L{Admission.admit}: is the server accepting, is the page's origin
     allowed, is there room under the connection limits, does the
     application's C{authenticate} hook agree? The answer is a L{Ticket}
     (which holds the connection's place under the limits) or a L{Refused}
     that the transport turns into its own kind of refusal (an HTTP status
     for the handshake or the JSON answer).
  2. L{Admission.open}: the admitted client gets its rate limit and the
     application's attributes, is registered with the tracker, welcomed,
     and logged once.
  3. L{Admission.close}: unregistered, its place released, counted and
     logged once with its close code. Safe to call on every path that ends
     a connection.

A transport adds only its framing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from appserver._core.client import Client
    from appserver._server.runtime import Runtime

__all__ = ["Admission", "Refused", "Ticket", "Visitor", "refused_from"]


class Refused(Exception):
    """
    A connection is not admitted.

    @ivar status: the HTTP status of the refusal (a handshake's, or a JSON
        answer's).
    @ivar code: the machine-readable error code of JSON answers.
    @ivar message: what the client is told.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refused_from(failure: Failure) -> Refused:
    """
    The L{Refused} a failed admission carries; any other failure goes on
    (re-raised), as C{Failure.trap} does.
    """
    failure.trap(Refused)
    refused = failure.value
    assert isinstance(refused, Refused)  # trap() re-raised anything else
    return refused


@dataclass(frozen=True, slots=True)
class Visitor:
    """
    What a transport knows of a connection before it is admitted: the
    request that opens it, in the same shape for every transport (this is
    also what the application's C{authenticate} hooks receive, as a dict).

    @ivar transport: C{"websocket"}, C{"ajax"} or C{"sse"} (the label of
        its log lines).
    @ivar peer: the address as Autobahn writes it (C{tcp4:127.0.0.1:50996}).
    @ivar ip: the address counted by the connection limits.
    """

    transport: str
    peer: str
    ip: str
    origin: str | None
    host: str | None
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)

    def hook_info(self) -> dict[str, Any]:
        """
        The dict the application's C{authenticate} hooks receive
        (docs/api.md).
        """
        return {"query": dict(self.query), "headers": dict(self.headers), "cookies": dict(self.cookies),
                "peer": self.peer, "origin": self.origin, "path": self.path}


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class Ticket:
    """
    An admitted connection: it holds one place under the connection limits
    until L{release}d, and carries what the application's hooks said about
    it.
    """

    __slots__ = ("visitor", "attributes", "_admission", "_held")

    def __init__(self, admission: "Admission", visitor: Visitor, attributes: dict[str, Any]) -> None:
        self.visitor = visitor
        self.attributes = attributes
        self._admission = admission
        self._held = True

    def release(self) -> None:
        """
        Give the place back; only the first call does anything.
        """
        if self._held:
            self._held = False
            self._admission.runtime.limiter.release(self.visitor.ip)


#: How each transport names itself in the open and close log lines.
_LABELS = {"websocket": "WebSocket", "ajax": "Ajax session", "sse": "Event stream"}


class Admission:
    """
    The one admission and life-cycle path of a server (see the module's
    docstring).
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def admit(self, visitor: Visitor) -> Deferred[Ticket]:
        """
        Decide whether C{visitor} may connect.

        @return: a Deferred firing with the L{Ticket} (already holding its
            place under the limits), or failing with L{Refused}. It has
            fired already when the application has no C{authenticate} hook.
        """
        runtime = self.runtime
        log = _log_for(visitor.transport)
        if not runtime.accepting:
            return fail(Refused(503, "shutting_down", "the server is shutting down; reconnect shortly"))
        if not runtime.origins.allows(visitor.origin, visitor.host):
            log.warn("refused {transport} from {peer} ({path}): origin {origin!r} not allowed; {advice}",
                     transport=_label(visitor), peer=visitor.peer, path=visitor.path, origin=visitor.origin,
                     advice=runtime.origins.advice(visitor.origin or "", visitor.host))
            return fail(Refused(403, "origin_refused", "this origin may not use this server"))
        refusal = runtime.limiter.refusal(visitor.ip)
        if refusal is not None:
            log.warn("refused {transport} from {peer} ({path}): {refusal}", transport=_label(visitor),
                     peer=visitor.peer, path=visitor.path, refusal=refusal)
            return fail(Refused(503, "too_many_connections", refusal))
        runtime.limiter.acquire(visitor.ip)
        ticket = Ticket(self, visitor, {})
        if not runtime.app.authenticators:
            return succeed(ticket)
        return ensureDeferred(self._authenticate(ticket, log))

    async def _authenticate(self, ticket: Ticket, log: Logger) -> Ticket:
        visitor = ticket.visitor
        try:
            attributes = await self.runtime.authenticate(visitor.hook_info())
        except BaseException:
            ticket.release()
            raise
        if attributes is None:
            ticket.release()
            log.info("refused {transport} from {peer} ({path}): authentication refused", transport=_label(visitor),
                     peer=visitor.peer, path=visitor.path)
            raise Refused(403, "authentication_refused", "the application refused this connection")
        ticket.attributes.update(attributes)
        return ticket

    def open(self, client: "Client", ticket: Ticket, welcome: bool = True,
             welcome_extra: Mapping[str, Any] | None = None) -> None:
        """
        The admitted connection is open: register its client, welcome it
        (unless its protocol is the application's own) and log it.

        @param welcome_extra: what the transport adds to this client's
            C{welcome} alone (an event stream's session secret); never
            logged.
        """
        runtime = self.runtime
        client.bucket = runtime.new_bucket()
        if ticket.attributes:
            client.attributes.update(ticket.attributes)
        runtime.tracker.register(client)
        # What the request said is used up: an open connection keeps only
        # what closing needs (an idle connection should cost little).
        ticket.visitor = replace(ticket.visitor, query=_NOTHING, headers=_NOTHING, cookies=_NOTHING)
        _log_for(client.transport).info(
            "{label} open {client_id} peer={peer} origin={origin} transport={transport}",
            label=_label(ticket.visitor), client_id=client.client_id,
            peer=client.peer, origin=client.origin, transport=client.transport)
        if welcome:
            runtime.tracker.welcome(client, welcome_extra)

    def close(self, client: "Client", ticket: Ticket, code: int | None) -> None:
        """
        The connection has ended with C{code} (C{None}: dropped without
        one): count the client out and log it. Only the first call for a
        registered client does anything.
        """
        tracker = self.runtime.tracker
        client.closed = True
        # Its handlers still running have nobody to answer.
        self.runtime.dispatcher.client_gone(client)
        ticket.release()
        if tracker.get(client.client_id) is not client:
            return
        tracker.unregister(client)
        tracker.events.closed(client, code)
        _log_for(client.transport).info(
            "{label} closed {client_id} peer={peer} origin={origin} transport={transport} code={code}",
            label=_label(ticket.visitor), client_id=client.client_id,
            peer=client.peer, origin=client.origin, transport=client.transport, code=code)


def _label(visitor: Visitor) -> str:
    return _LABELS.get(visitor.transport, visitor.transport)


#: One logger per transport, named C{appserver.<transport>}: operators
#: filter connection lines by it (docs/operations.md).
_LOGS = {transport: Logger(namespace=f"appserver.{transport}") for transport in _LABELS}
_OTHER_LOG = Logger(namespace="appserver.connections")


def _log_for(transport: str) -> Logger:
    return _LOGS.get(transport, _OTHER_LOG)
