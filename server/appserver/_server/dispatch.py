"""
From a validated envelope to the code that handles it, and from the
handler's result to the reply, identically for every transport.

Built-in types (channels, rooms, recovery, ping) are handled here; every
other type goes to the application's handlers. One rule for every type: a
request with an C{id} gets exactly one answer carrying that C{id}, a
C{reply} or an C{error}, whatever a handler does (return, raise, return a
failing Deferred), and the connection stays open. Without an C{id}, the
built-ins that acknowledge answer with their own type (C{subscribed},
C{unsubscribed}, C{members}, C{resumed}, C{pong}).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._server.app import App, Context
from appserver._core.client import Client
from appserver._server.coroutines import as_deferred, is_async
from appserver._core.envelope import Envelope, ProtocolError, error_payload
from appserver._core.tracker import ClientTracker
from appserver._core.names import validate_channel_name, validate_idempotency_key, validate_room_name

__all__ = ["Dispatcher", "RATE_LIMIT_CLOSE_CODE", "RATE_LIMIT_CLOSE_AFTER"]

#: A client that keeps sending after this many C{rate_limited} errors in a
#: row is closed with L{RATE_LIMIT_CLOSE_CODE}: it is not listening.
RATE_LIMIT_CLOSE_AFTER = 50
RATE_LIMIT_CLOSE_CODE = 4001

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.dispatch")


def _require_object(data: Any, *fields: str) -> dict[str, Any]:
    if not isinstance(data, dict) or any(name not in data for name in fields):
        wanted = ", ".join(f'"{name}"' for name in fields)
        raise ProtocolError("bad_data", f'"data" must be an object with {wanted}')
    return data


class Dispatcher:
    """
    Runs handlers for one server. Transports call L{dispatch}.
    """

    def __init__(self, tracker: ClientTracker, app: App, reactor: IReactorTime) -> None:
        self.tracker = tracker
        self.app = app
        self.reactor = reactor
        #: The handlers still running, by client: cancelled when it goes.
        self._running: dict[Client, set[Deferred[Any]]] = {}
        self._builtins: dict[str, Callable[[Client, Envelope], Any]] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "publish": self._publish,
            "join": self._join,
            "leave": self._leave,
            "members": self._members,
            "resume": self._resume,
            "ping": self._ping,
        }

    def dispatch(self, client: Client, envelope: Envelope) -> None:
        """
        Handle one envelope from C{client}; answers go through the tracker.
        """
        if client.bucket is not None and not client.bucket.allow():
            client.rejected_in_a_row += 1
            if client.rejected_in_a_row >= RATE_LIMIT_CLOSE_AFTER:
                client.close(RATE_LIMIT_CLOSE_CODE, "rate limit exceeded repeatedly")
            else:
                self.reject(client, "rate_limited", "too many messages per second; slow down", envelope.id)
            return
        client.rejected_in_a_row = 0
        self.tracker.events.message_in(client, envelope.type)
        builtin = self._builtins.get(envelope.type)
        try:
            if builtin is not None:
                builtin(client, envelope)
                return
            handler = self.app.handlers.get(envelope.type)
            if handler is None:
                raise ProtocolError("unknown_type", f"no handler for message type {envelope.type!r}")
            result = handler(Context(client, self.tracker, envelope, self.reactor), envelope.data)
        except ProtocolError as error:
            self.reject(client, error.code, error.message, envelope.id)
            return
        except Exception:
            self._handler_failed(client, envelope, Failure())
            return
        if is_async(result):
            self._follow(client, envelope, as_deferred(result, self.reactor))
        else:
            self._reply(client, envelope, result)

    def _follow(self, client: Client, envelope: Envelope, running: Deferred[Any]) -> None:
        """
        Answer once a handler's Deferred or coroutine ends, unless its
        client has gone (L{client_gone} cancelled it).
        """
        if not running.called:
            self.track(client, running)
        running.addCallbacks(lambda value: self._reply(client, envelope, value),
                             lambda failure: self._async_failed(client, envelope, failure))

    def track(self, client: Client, running: Deferred[Any]) -> None:
        """
        Cancel C{running} (a handler's work for C{client}) if the client
        goes before it ends.
        """
        if client.closed:
            running.cancel()
            return
        handlers = self._running.setdefault(client, set())
        handlers.add(running)

        def ended(outcome: Any) -> Any:
            handlers.discard(running)
            if not handlers and self._running.get(client) is handlers:
                del self._running[client]
            return outcome
        running.addBoth(ended)

    def client_gone(self, client: Client) -> None:
        """
        The client disconnected: cancel its handlers still running (an
        asyncio coroutine gets C{CancelledError} at its current C{await}).
        """
        for running in list(self._running.pop(client, ())):
            running.cancel()

    def reject(self, client: Client, code: str, message: str, request_id: Any = None) -> None:
        """
        Answer with an C{error} envelope.
        """
        self.tracker.send_to(client, error_payload(code, message, request_id))

    def _reply(self, client: Client, envelope: Envelope, value: Any) -> None:
        if value is None and envelope.id is None:
            return
        try:
            self.tracker.send_to(client, {"type": "reply", "re": envelope.type, "id": envelope.id, "data": value})
        except orjson.JSONEncodeError:
            # The handler returned something JSON cannot carry: its bug, still one answer.
            self._handler_failed(client, envelope, Failure())

    def _async_failed(self, client: Client, envelope: Envelope, failure: Failure) -> None:
        if client.closed and failure.check(CancelledError, asyncio.CancelledError):
            return  # cancelled because the client went: nobody to answer
        error = failure.value
        if isinstance(error, ProtocolError):
            self.reject(client, error.code, error.message, envelope.id)
        else:
            self._handler_failed(client, envelope, failure)

    def _handler_failed(self, client: Client, envelope: Envelope, failure: Failure) -> None:
        _log.failure("handler for {message_type!r} failed (client {client_id})", failure,
                         message_type=envelope.type, client_id=client.client_id)
        self.tracker.events.handler_error(envelope.type)
        self.reject(client, "handler_failed",
                    f"the server failed to handle {envelope.type!r}; the error was logged", envelope.id)

    def _ack(self, client: Client, envelope: Envelope, message_type: str, data: Any) -> None:
        """
        Answer a built-in by the one rule every request follows: with an
        C{id}, the answer is a C{reply} (or an C{error}) like any handler's;
        without one, the built-in's own type (C{subscribed}, C{pong}, ...).
        """
        if envelope.id is not None:
            self._reply(client, envelope, data)
        else:
            self.tracker.send_to(client, {"type": message_type, "id": None, "data": data})

    # Built-in handlers ---------------------------------------------------

    def _subscribe(self, client: Client, envelope: Envelope) -> None:
        channel = validate_channel_name(_require_object(envelope.data, "channel")["channel"])
        self.tracker.subscribe(client, channel)
        self._ack(client, envelope, "subscribed", {"channel": channel})

    def _unsubscribe(self, client: Client, envelope: Envelope) -> None:
        channel = validate_channel_name(_require_object(envelope.data, "channel")["channel"])
        self.tracker.unsubscribe(client, channel)
        self._ack(client, envelope, "unsubscribed", {"channel": channel})

    def _publish(self, client: Client, envelope: Envelope) -> None:
        data = _require_object(envelope.data, "channel")
        channel = validate_channel_name(data["channel"])
        idempotency_key = validate_idempotency_key(data.get("idempotency_key"))
        if not self.app.may_publish(client, channel, data.get("data")):
            raise ProtocolError("forbidden", f"clients may not publish on {channel!r}")
        self.tracker.publish(channel, data.get("data"), idempotency_key=idempotency_key)
        self._reply(client, envelope, None)

    def _join(self, client: Client, envelope: Envelope) -> None:
        data = _require_object(envelope.data, "room", "username")
        self.tracker.join_room(client, validate_room_name(data["room"]), data["username"])
        self._reply(client, envelope, None)

    def _leave(self, client: Client, envelope: Envelope) -> None:
        room = validate_room_name(_require_object(envelope.data, "room")["room"])
        if not self.tracker.leave_room(client, room):
            raise ProtocolError("bad_data", f"not a member of room {room!r}")
        self._reply(client, envelope, None)

    def _members(self, client: Client, envelope: Envelope) -> None:
        room = validate_room_name(_require_object(envelope.data, "room")["room"])
        # Every node's members: at once on a single node, later with Redis.
        self.tracker.room_members(room).addCallbacks(
            lambda found: self._members_found(client, envelope, room, found),
            lambda failure: self._async_failed(client, envelope, failure))

    def _members_found(self, client: Client, envelope: Envelope, room: str, names: list[str]) -> None:
        self._ack(client, envelope, "members", {"room": room, "members": names})

    def _resume(self, client: Client, envelope: Envelope) -> None:
        data = _require_object(envelope.data, "epoch", "since")
        channels = data.get("channels") or []
        if not isinstance(channels, list):
            raise ProtocolError("bad_data", '"channels" must be a list of channel names')
        self.resume(client, data["epoch"], data["since"], channels, envelope)

    def resume(self, client: Client, epoch: Any, since: Any, channels: list[Any],
               request: Envelope | None = None) -> Deferred[dict[str, Any] | None]:
        """
        Subscribe C{client} to C{channels}, replay what it missed after
        position C{since} of C{epoch}, then answer C{resumed}: the work of
        the C{resume} envelope, and of a transport that resumes by itself
        (an event stream's C{Last-Event-ID}), so both replay alike.

        @param request: the C{resume} envelope, whose C{id} the answer
            carries; C{None} when the transport asked.
        @raise ProtocolError: C{bad_data} for a bad channel name, C{limit}
            past the per-client channel limit.
        @return: a Deferred firing with the C{resumed} data once it is sent
            (C{None} when the replay failed and an C{error} was sent
            instead): on a single node before this returns, with Redis
            once Redis has been read. Everything up to its C{position} has
            then been handed to the client.
        """
        for channel in channels:
            self.tracker.subscribe(client, validate_channel_name(channel))
        envelope = request if request is not None else Envelope("resume")
        # The ack follows the replayed messages.
        return self.tracker.replay(client, epoch, since, channels, client.connected_at).addCallbacks(
            lambda recovered: self._resumed(client, envelope, recovered),
            lambda failure: self._async_failed(client, envelope, failure))

    def _resumed(self, client: Client, envelope: Envelope, recovered: bool) -> dict[str, Any]:
        data = {"recovered": recovered, "epoch": self.tracker.epoch, "position": self.tracker.position}
        self._ack(client, envelope, "resumed", data)
        return data

    def _ping(self, client: Client, envelope: Envelope) -> None:
        self._ack(client, envelope, "pong", envelope.data)
