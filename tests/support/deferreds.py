"""
Reading Deferreds that have already fired, for tests of synchronous code.

The tracker's cluster-wide calls (C{broadcast}, C{publish},
C{room_members}, C{room_size}, C{cluster_counts}, C{replay}) always return
a Deferred; on the memory backplane it has fired before the call returns.
L{fired} reads it and fails clearly when it has not, which is itself a
regression worth seeing.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["fired"]

T = TypeVar("T")


def fired(deferred: "Deferred[T]") -> T:
    """
    The result of a Deferred that has already fired.

    @raise AssertionError: C{deferred} is not a Deferred, or has not fired.
    @raise Exception: the Deferred failed: its exception, re-raised here
        (and no longer reported as unhandled).
    """
    assert isinstance(deferred, Deferred), f"expected a Deferred, got {deferred!r}"
    results: list[Any] = []

    def keep(result: Any) -> Any:
        results.append(result)
        return result

    deferred.addBoth(keep)
    assert results, f"{deferred!r} has not fired yet"
    result = results[0]
    if isinstance(result, Failure):
        deferred.addErrback(lambda _: None)
        result.raiseException()
    return result
