"""A tiny future for sans-IO operations.

The protocol cores cannot use asyncio futures (they must run under the
simulator's virtual time too), so a long operation — a lookup, a put, a join —
returns an :class:`Operation`. Adapters wait on it: the asyncio adapter wraps
it in an ``asyncio.Future``, the simulator runs events until ``done``.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Operation(Generic[T]):
    __slots__ = ("name", "done", "_result", "_error", "_callbacks")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.done = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[["Operation[T]"], Any]] = []

    def set_result(self, value: T) -> None:
        if self.done:
            return
        self.done = True
        self._result = value
        self._fire()

    def set_error(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self._error = error
        self._fire()

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[["Operation[T]"], Any]) -> None:
        if self.done:
            cb(self)
        else:
            self._callbacks.append(cb)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def result(self) -> T:
        if not self.done:
            raise RuntimeError(f"operation {self.name!r} is not done")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def __repr__(self) -> str:
        state = "pending" if not self.done else ("failed" if self._error else "done")
        return f"<Operation {self.name} {state}>"
