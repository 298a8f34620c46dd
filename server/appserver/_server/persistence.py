"""
A node's stream kept across a graceful restart (C{--state-file}).

Recovery after a reconnect needs the same epoch, the same positions and the
histories. With only the in-memory state a restarted node has a new epoch,
so every returning client is told C{recovered: false}. With a state file the
node writes its epoch, last position and histories as JSON when it stops
gracefully, and reads them back when it starts: its clients reconnect and
get exactly what they missed, also what was published before the restart.

The file is deleted as soon as it has been read. A node that then dies
without a graceful shutdown (SIGKILL, a crash, power loss) leaves no file,
and its next start takes a new epoch: reusing the old epoch with a position
from before the crash would hand out positions that clients have already
seen for other messages, and they would be told C{recovered: true} about a
stream they never received.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import orjson
from twisted.logger import Logger

from appserver._core.envelope import encode
from appserver._core.tracker import ClientTracker

__all__ = ["save_state", "load_state", "STATE_VERSION"]

STATE_VERSION = 1

log = Logger(namespace="appserver.persistence")


def snapshot(tracker: ClientTracker) -> dict[str, Any]:
    """
    The part of the tracker's state that recovery needs (its stream log,
    swept first so that expired messages are not saved), as JSON values.
    """
    tracker.sweep()
    return {"version": STATE_VERSION, **tracker.stream.snapshot()}


def save_state(tracker: ClientTracker, path: str) -> bool:
    """
    Write the state atomically (a temporary file renamed over C{path}).
    Never raises: a shutdown must finish even when the disk is full.

    @return: whether the file was written.
    """
    try:
        data = encode(snapshot(tracker))
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(prefix=".appserver-state-", dir=directory)
        try:
            with os.fdopen(handle, "wb") as output:
                output.write(data)
                output.flush()
                os.fsync(output.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except Exception:
        log.failure("could not save the stream state to {path}; the next start takes a new epoch", path=path)
        return False
    log.info("saved epoch {epoch} at position {position} with {streams} histories to {path}",
             epoch=tracker.epoch, position=tracker.position, streams=len(tracker.stream.streams()), path=path)
    return True


def load_state(tracker: ClientTracker, path: str) -> bool:
    """
    Restore the epoch, position and histories saved by L{save_state}, then
    delete the file (see the module docstring). A missing, unreadable or
    foreign file leaves the tracker as it is: a new epoch.

    @return: whether the state was restored.
    """
    try:
        with open(path, "rb") as source:
            raw = source.read()
    except FileNotFoundError:
        log.info("no stream state at {path}: starting epoch {epoch}", path=path, epoch=tracker.epoch)
        return False
    except OSError as error:
        log.warn("cannot read the stream state at {path} ({error}): starting epoch {epoch}",
                 path=path, error=error, epoch=tracker.epoch)
        return False
    stream = tracker.stream
    previous = stream.snapshot()
    try:
        state = orjson.loads(raw)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} state file")
        stream.restore(state)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        log.warn("ignoring the stream state at {path} ({error}): starting epoch {epoch}",
                 path=path, error=error, epoch=tracker.epoch)
        return False
    try:
        os.unlink(path)
    except OSError as error:
        # Keeping the file would let a crash restore it a second time.
        log.error("cannot delete the stream state at {path} after reading it ({error}): not using it",
                  path=path, error=error)
        stream.restore(previous)
        return False
    log.info("restored epoch {epoch} at position {position} with {streams} histories from {path}",
             epoch=tracker.epoch, position=tracker.position, streams=len(stream.streams()), path=path)
    return True

