"""
Ajax sessions: the transport for browsers that cannot or may not use a
WebSocket. The client sends with ordinary requests and the server pushes by
answering a long poll.

Every message for a session waits in its bounded queue with a sequence
number until a poll acknowledges it (C{since}): a poll whose answer was lost
is simply repeated with the same C{since} and gets the same messages, so
nothing is lost or duplicated between polls.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.server import Request

from appserver._core.client import Client, session_digest
from appserver._core.envelope import Outgoing, encode
from appserver._web.jsonweb import RawJSON, write_json
from appserver._core.outbound import DISCONNECT, OutboundQueue
from appserver._server.admission import Ticket
from appserver._web.writes import EndOfTurn

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["AjaxSession", "SessionRegistry"]

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.ajax")


class AjaxSession(Client):
    """
    One Ajax client: a queue, at most one waiting poll, and an idle timer
    that runs while no poll waits.
    """

    transport = "ajax"
    __slots__ = ("registry", "waiting", "waiting_callback", "_poll_timer", "_idle_timer",
                 "_flush_due", "close_reason", "ticket")

    def __init__(self, registry: "SessionRegistry", ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry = registry
        limits = self.limits
        self.queue = OutboundQueue(limits.max_queue_messages, limits.max_queue_bytes)
        self.waiting: Request | None = None
        self.waiting_callback: str | None = None
        self._poll_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._flush_due = False
        self.close_reason: tuple[int, str] | None = None
        #: Its admission: the place it holds under the connection limits.
        self.ticket = ticket

    # Delivery -------------------------------------------------------------

    def deliver(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        if self.closed:
            return
        self._enqueue(message, policy)
        if self.waiting is not None and not self._flush_due and not self.closed:
            # Answer on the next reactor turn, so a burst of messages goes
            # out in one response rather than one per poll.
            self._flush_due = True
            self.registry.answers.add(self)

    def write(self, message: Outgoing) -> None:
        # Sessions always queue (deliver is overridden); nothing writes directly.
        raise AssertionError("AjaxSession.write is never called")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        End the session: a waiting poll is answered with the reason, and the
        next request with this session id gets C{unknown_session}.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = (code, reason)
        # What is still queued (a shutdown's reconnect envelope) goes out
        # with the close, in the same answer.
        closed = {"code": code, "reason": reason}
        self._finish_waiting(lambda request, callback: self._render(request, callback, closed=closed))
        self.registry.forget(self)

    # Polling ----------------------------------------------------------------

    def poll(self, request: Request, since: int, callback: str | None) -> bytes | None:
        """
        Acknowledge everything up to C{since}, then answer now if anything
        waits, else hold the request until something arrives or the poll
        timeout passes. Returns the body when answering at once.
        """
        queue = self.queue
        assert queue is not None
        queue.acknowledge(since)
        if self.waiting is not None:
            self._answer_waiting_empty()
        # After answering the replaced poll, which restarts the idle timer.
        self._stop_idle_timer()
        if queue:
            self._start_idle_timer()
            return self._render(request, callback)
        self.waiting = request
        self.waiting_callback = callback
        self._poll_timer = self.registry.reactor.callLater(self.registry.poll_timeout, self._answer_waiting_empty)
        request.notifyFinish().addBoth(lambda _: self._poll_gone(request))
        return None

    def _render(self, request: Request, callback: str | None, closed: dict[str, Any] | None = None) -> bytes:
        queue = self.queue
        assert queue is not None
        pending = queue.pending()
        position = pending[-1][0] if pending else queue.last_seq
        dropped = queue.take_dropped()
        self.events.delivered(self, (message for _, message in pending))
        body = b'{"messages":[' + b",".join(message.payload for _, message in pending) + b'],"position":' \
            + str(position).encode("ascii")
        if dropped:
            body += b',"dropped":' + str(dropped).encode("ascii")
        if closed is not None:
            body += b',"closed":' + encode(closed)
        body += b"}"
        return write_json(request, self.registry.runtime, RawJSON(body), 200, callback)

    def flush(self) -> None:
        """
        Answer the waiting poll with what is queued (the registry's
        end-of-turn batch calls this after messages arrived).
        """
        self._flush_due = False
        self._finish_waiting(self._render)

    def _answer_waiting_empty(self) -> None:
        self._answer({"messages": [], "position": self._empty_position()})

    def _empty_position(self) -> int:
        """
        The position of an answer without messages: just before the oldest
        message still waiting (one may be due to the next poll), so that
        polling from it loses nothing.
        """
        queue = self.queue
        assert queue is not None  # made by __init__
        pending = queue.pending(1)
        return pending[0][0] - 1 if pending else queue.last_seq

    def _answer(self, payload: dict[str, Any]) -> None:
        self._finish_waiting(
            lambda request, callback: write_json(request, self.registry.runtime, payload, 200, callback))

    def _finish_waiting(self, body: Callable[[Request, str | None], bytes]) -> None:
        """
        Answer the waiting poll, if any, with C{body(request, callback)};
        the idle timer runs again until the next poll.
        """
        request = self.waiting
        if request is None:
            return
        callback = self.waiting_callback
        self._clear_waiting()
        request.write(body(request, callback))
        request.finish()
        if not self.closed:
            self._start_idle_timer()

    def _clear_waiting(self) -> None:
        self.waiting = None
        self.waiting_callback = None
        call = self._poll_timer
        if call is not None and call.active():
            call.cancel()
        self._poll_timer = None

    def _poll_gone(self, request: Request) -> None:
        """
        The waiting poll's connection ended before it was answered.
        """
        if self.waiting is request:
            self._clear_waiting()
            if not self.closed:
                self._start_idle_timer()

    # Expiry ---------------------------------------------------------------

    def touch(self) -> None:
        """
        Activity other than a poll (a send) keeps an idle session alive too.
        """
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.registry.idle_timeout)

    def _start_idle_timer(self) -> None:
        self._stop_idle_timer()
        self._idle_timer = self.registry.reactor.callLater(self.registry.idle_timeout, self._expire)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _expire(self) -> None:
        self._idle_timer = None
        _log.info("Ajax session {client_id} expired after {seconds}s without a poll",
                               client_id=self.client_id, seconds=self.registry.idle_timeout)
        self.close(1001, "session expired")

    def stop_timers(self) -> None:
        self._stop_idle_timer()
        self._clear_waiting()


class SessionRegistry:
    """
    The session secrets of one server and the Ajax sessions, by id.

    A secret names the client it was issued to, whatever its transport: an
    Ajax session (opened here, counted in the tracker while registered,
    expiring when idle) or an event stream (L{appserver._web.eventstream}),
    so C{/send} and C{/disconnect} find either by the same lookup
    (L{find}). Only the SHA-256 of a secret is kept.
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.poll_timeout = runtime.settings.poll_timeout
        self.idle_timeout = runtime.settings.session_idle_timeout
        #: Answers every session with news in a turn, once, at its end, so
        #: a burst of messages goes out in one response per poll.
        self.answers = EndOfTurn(self.reactor)
        #: The Ajax sessions, by public client id.
        self.sessions: dict[str, AjaxSession] = {}
        #: Every holder of a secret, by the digest of its secret: only the
        #: owner knows the secret, and this node keeps nothing it could
        #: leak.
        self._by_secret: dict[bytes, Client] = {}
        self._digests: dict[Client, bytes] = {}

    def __len__(self) -> int:
        """
        The open Ajax sessions.
        """
        return len(self.sessions)

    def issue(self, client: Client) -> str:
        """
        Make a new session secret for C{client}, found by L{find} until
        L{revoke}d. The backplane makes it, so that any node can tell the
        client's home node from it (docs/scaling.md).

        @return: the secret, to be told to the client's own connection
            only (docs/protocol.md).
        """
        secret = self.runtime.tracker.backplane.new_session_secret()
        digest = session_digest(secret)
        self._by_secret[digest] = client
        self._digests[client] = digest
        return secret

    def revoke(self, client: Client) -> None:
        """
        Forget C{client}'s secret: from now on it finds nothing.
        """
        digest = self._digests.pop(client, None)
        if digest is not None and self._by_secret.get(digest) is client:
            del self._by_secret[digest]

    def open(self, ticket: Ticket) -> tuple[AjaxSession, str]:
        """
        Open an admitted session: registered, welcomed, expiring when idle.

        @return: the session and its secret, which only the caller of
            C{/connect} is told (docs/protocol.md).
        """
        runtime = self.runtime
        tracker = runtime.tracker
        visitor = ticket.visitor
        session = AjaxSession(self, ticket, limits=tracker.limits, events=tracker.events,
                              peer=visitor.peer, origin=visitor.origin)
        secret = self.issue(session)
        self.sessions[session.client_id] = session
        session._start_idle_timer()
        runtime.admission.open(session, ticket)
        return session, secret

    def find(self, secret: str) -> Client | None:
        """
        The open Ajax session or event stream whose secret this is, or
        C{None}: an unknown or expired secret, or anything else (a client
        id included).
        """
        return self.find_digest(session_digest(secret))

    def find_digest(self, digest: bytes) -> Client | None:
        """
        L{find} by the secret's digest: what a request routed from another
        node carries (the secret itself never crosses the backplane).
        """
        client = self._by_secret.get(digest)
        if client is None or not hmac.compare_digest(self._digests.get(client, b""), digest):
            return None
        return client

    def forget(self, session: AjaxSession) -> None:
        if self.sessions.get(session.client_id) is not session:
            return
        del self.sessions[session.client_id]
        self.revoke(session)
        session.closed = True
        session.stop_timers()
        code = session.close_reason[0] if session.close_reason else 1000
        self.runtime.admission.close(session, session.ticket, code)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(code, reason)
