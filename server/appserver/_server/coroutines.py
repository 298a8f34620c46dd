"""
Running the application's code whatever it returns: a value, a Deferred, or
a coroutine that awaits asyncio futures and tasks I{and} Deferreds in the
same body.

Every place user code may be a coroutine (message handlers, Ajax routes,
C{every} tasks, start-up and shutdown hooks, C{authenticate}, raw WebSocket
endpoints) goes through L{call} or L{as_deferred}, so the rules are written
once:

  - on Twisted's asyncio reactor (the C{appserver} command's default, or
    C{twistd --reactor=asyncio}) a coroutine runs as an asyncio Task, so
    asyncio libraries find their loop and their current task; a Deferred it
    awaits is waited for on that loop (L{_Bridge});
  - on any other reactor Twisted drives it: Deferreds work, and the first
    asyncio future it awaits fails with L{AsyncioReactorRequired}, which
    names the fix, instead of Python's C{await wasn't used with future};
  - either way the caller gets one Deferred, and cancelling it cancels the
    coroutine (C{asyncio.CancelledError} at its current C{await}).

Tests: C{tests/test_coroutines.py} (both reactors, in a subprocess for
asyncio) and C{tests/test_asyncio_apps.py} (a real server on the asyncio
reactor).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Awaitable, Callable, Generator, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

__all__ = ["AsyncioReactorRequired", "ASYNCIO_REACTOR_ADVICE", "asyncio_loop", "is_async", "as_deferred", "call",
           "spawn_scope", "TaskScope"]

T = TypeVar("T")

#: The fix, named in every error about asyncio on another reactor.
ASYNCIO_REACTOR_ADVICE = ("asyncio code needs Twisted's asyncio reactor: run the appserver command "
                          "(its default) or twistd --reactor=asyncio appserver")


class AsyncioReactorRequired(RuntimeError):
    """
    A coroutine awaited asyncio code while the reactor is not Twisted's
    asyncio reactor, so no asyncio loop runs to complete it.
    """

    def __init__(self) -> None:
        super().__init__(ASYNCIO_REACTOR_ADVICE)


def asyncio_loop(reactor: Any) -> asyncio.AbstractEventLoop | None:
    """
    The asyncio loop C{reactor} runs on, or C{None} when it is not
    Twisted's asyncio reactor.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def is_async(result: object) -> bool:
    """
    Whether user code returned something to wait for (a Deferred, a
    coroutine or another awaitable) rather than its answer.
    """
    return isinstance(result, Deferred) or hasattr(result, "__await__")


def as_deferred(result: Any, reactor: Any) -> Deferred[Any]:
    """
    A Deferred of what user code returned: a value, a Deferred, or an
    awaitable (run as described in the module docstring).
    """
    if isinstance(result, Deferred):
        return result
    if not hasattr(result, "__await__"):
        return succeed(result)
    loop = asyncio_loop(reactor)
    if loop is None:
        return ensureDeferred(_twisted_driven(result))
    if isinstance(result, asyncio.Future):
        return Deferred.fromFuture(result)
    return Deferred.fromFuture(loop.create_task(_on_asyncio(result, loop)))


def call(function: Callable[..., Any], *args: Any, reactor: Any) -> Deferred[Any]:
    """
    Call user code and give a Deferred of its result; an exception it
    raises at once fails the Deferred.
    """
    try:
        result = function(*args)
    except BaseException:
        return fail(Failure())
    return as_deferred(result, reactor)


# On the asyncio reactor ------------------------------------------------------

async def _on_asyncio(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop) -> T:
    return await _Bridge(awaitable, loop)


class _Bridge:
    """
    Runs an awaitable inside an asyncio Task: what it yields to wait for
    passes through to the Task, except Deferreds, which a Task cannot wait
    for (C{Task got bad yield}) and which are waited for through a future.
    Results and exceptions, cancellation included, go back unchanged.
    """

    __slots__ = ("_awaitable", "_loop")

    def __init__(self, awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop) -> None:
        self._awaitable = awaitable
        self._loop = loop

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = inner.send(sent) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            if isinstance(yielded, Deferred):
                yielded = _waiter(yielded, self._loop)
            try:
                sent, error = (yield yielded), None
            except BaseException as raised:
                sent, error = None, raised


def _waiter(deferred: Deferred[Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """
    A future done when C{deferred} fires, leaving its result in place for
    the C{await} that yielded it; cancelling the future (the Task was
    cancelled) cancels the Deferred.
    """
    future: asyncio.Future[None] = loop.create_future()

    def fired(result: Any) -> Any:
        if not future.done():
            future.set_result(None)
        return result

    def cancelled(done: asyncio.Future[None]) -> None:
        if done.cancelled():
            deferred.cancel()
            # Cancelled on the Task's behalf, which gets asyncio's
            # CancelledError: nobody is left to read Twisted's.
            deferred.addErrback(lambda failure: failure.trap(CancelledError) and None)

    deferred.addBoth(fired)
    future.add_done_callback(cancelled)
    # What asyncio's own futures set when awaited: the Task waits for it.
    future._asyncio_future_blocking = True
    return future


# On another reactor ------------------------------------------------------------

async def _twisted_driven(awaitable: Awaitable[T]) -> T:
    return await _DeferredsOnly(awaitable)


class _DeferredsOnly:
    """
    Lets Twisted drive an awaitable, turning its first wait on anything but
    a Deferred (an asyncio future) into L{AsyncioReactorRequired} at that
    C{await}, so the traceback shows the line.
    """

    __slots__ = ("_awaitable",)

    def __init__(self, awaitable: Awaitable[T]) -> None:
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = inner.send(sent) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            except RuntimeError as raised:
                # asyncio.sleep and friends ask for the running loop first.
                if "no running event loop" in str(raised) or "no current event loop" in str(raised):
                    raise AsyncioReactorRequired() from raised
                raise
            if not isinstance(yielded, Deferred):
                sent, error = None, AsyncioReactorRequired()
                continue
            try:
                sent, error = (yield yielded), None
            except BaseException as raised:
                sent, error = None, raised


# Tasks spawned by start-up hooks ------------------------------------------------

_scope: contextvars.ContextVar["TaskScope | None"] = contextvars.ContextVar("appserver_task_scope", default=None)


class TaskScope:
    """
    The asyncio tasks created, directly or not, by code run in L{spawn_scope}
    (a start-up hook's C{asyncio.create_task(consumer())}), so the service
    can cancel and await them at shutdown. A task inherits the context it
    was created in, so the scope follows it through every C{await}.
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """
        Record every task created in this scope on C{loop} (through its task
        factory, keeping any factory already set).
        """
        previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
            task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
            if _scope.get() is self and isinstance(task, asyncio.Task):
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            return task

        loop.set_task_factory(factory)

    def cancel_all(self) -> list[Deferred[Any]]:
        """
        Cancel every task still running; Deferreds firing when each ends.
        """
        ended = []
        for task in list(self.tasks):
            task.cancel()
            ended.append(Deferred.fromFuture(task).addErrback(lambda failure: None))
        return ended


def spawn_scope(scope: TaskScope, function: Callable[..., T], *args: Any) -> T:
    """
    Call C{function(*args)} with C{scope} current: tasks it creates (and
    the tasks they create) belong to C{scope}.
    """
    context = contextvars.copy_context()
    context.run(_scope.set, scope)
    return context.run(function, *args)
