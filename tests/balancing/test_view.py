"""The balancing interface is typed on `BackendView`: the pool's `Backend` offers all of it."""

from __future__ import annotations

import inspect

from usher.balancing import BackendView
from usher.config import HostPort
from usher.pool import Backend


def view_members() -> list[str]:
    # Pure, the members are properties and functions; compiled by mypyc, getset and method
    # descriptors.
    return sorted(
        name
        for name, member in vars(BackendView).items()
        if not name.startswith("_")
        and (inspect.isdatadescriptor(member) or inspect.isroutine(member))
    )


def test_a_backend_has_everything_an_algorithm_may_read() -> None:
    backend = Backend(HostPort("127.0.0.1", 9001), weight=3, max_connections=5)
    names = view_members()
    assert {"address", "weight", "effective_weight", "active", "latency_ewma", "in_flight"} <= set(
        names
    )
    missing = [name for name in names if not hasattr(backend, name)]
    assert missing == []
    assert (backend.weight, backend.effective_weight, backend.in_flight()) == (3, 3.0, 0)


def test_the_view_reads_and_never_writes() -> None:
    settable = [
        name
        for name in view_members()
        if isinstance(vars(BackendView)[name], property) and vars(BackendView)[name].fset
    ]
    assert settable == []
