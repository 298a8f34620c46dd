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

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.server import Request

from appserver._core.client import Client
from appserver._core.envelope import Outgoing, encode
from appserver._web.jsonweb import RawJSON, write_json
from appserver._core.outbound import OutboundQueue
from appserver._web.writes import EndOfTurn

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["AjaxSession", "SessionRegistry"]


class AjaxSession(Client):
    """
    One Ajax client: a queue, at most one waiting poll, and an idle timer
    that runs while no poll waits.
    """

    transport = "ajax"
    __slots__ = ("registry", "waiting", "waiting_callback", "_poll_timer", "_idle_timer",
                 "_flush_due", "close_reason", "limiter_ip")

    def __init__(self, registry: "SessionRegistry", **kwargs: Any) -> None:
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
        #: The address counted by the connection limiter for this session.
        self.limiter_ip: str | None = None

    # Delivery -------------------------------------------------------------

    def deliver(self, message: Outgoing, policy: str = "disconnect") -> None:
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
        if queue is None:
            return 0
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
        self.registry.log.info("Ajax session {client_id} expired after {seconds}s without a poll",
                               client_id=self.client_id, seconds=self.registry.idle_timeout)
        self.close(1001, "session expired")

    def stop_timers(self) -> None:
        self._stop_idle_timer()
        self._clear_waiting()


class SessionRegistry:
    """
    The Ajax sessions of one server, by id; registering a session counts it
    in the tracker, forgetting it counts it out.
    """

    log = Logger()

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.poll_timeout = runtime.settings.poll_timeout
        self.idle_timeout = runtime.settings.session_idle_timeout
        #: Answers every session with news in a turn, once, at its end, so
        #: a burst of messages goes out in one response per poll.
        self.answers = EndOfTurn(self.reactor)
        self.sessions: dict[str, AjaxSession] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def open(self, peer: str, origin: str | None, attributes: dict[str, Any] | None = None) -> AjaxSession:
        tracker = self.runtime.tracker
        session = AjaxSession(self, limits=tracker.limits, events=tracker.events, peer=peer, origin=origin,
                              client_id=tracker.backplane.new_session_id())
        session.bucket = self.runtime.new_bucket()
        if attributes:
            session.attributes.update(attributes)
        self.sessions[session.client_id] = session
        tracker.register(session)
        session._start_idle_timer()
        tracker.welcome(session)
        self.log.info("Ajax session open {client_id} peer={peer} origin={origin} transport={transport}",
                      client_id=session.client_id, peer=peer, origin=origin, transport=session.transport)
        return session

    def get(self, session_id: str | None) -> AjaxSession | None:
        if not session_id:
            return None
        return self.sessions.get(session_id)

    def forget(self, session: AjaxSession) -> None:
        if self.sessions.get(session.client_id) is not session:
            return
        del self.sessions[session.client_id]
        session.closed = True
        session.stop_timers()
        self.runtime.tracker.unregister(session)
        if session.limiter_ip is not None:
            self.runtime.limiter.release(session.limiter_ip)
            session.limiter_ip = None
        code = session.close_reason[0] if session.close_reason else 1000
        self.runtime.tracker.events.closed(session, code)
        self.log.info("Ajax session closed {client_id} peer={peer} origin={origin} transport={transport} "
                      "code={code}", client_id=session.client_id, peer=session.peer, origin=session.origin,
                      transport=session.transport, code=code)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(code, reason)
