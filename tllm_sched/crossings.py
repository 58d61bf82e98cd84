"""tllm_sched/crossings.py: count Python -> C++ calls (the instrumented mode of the schedulers).

A `CountingProxy` stands in for a bound C++ object: every method call, property read and `len()`
through it adds one to its `Counter`. Reads of numpy views taken before wrapping are not
crossings and are not counted. Used only when a scheduler is built with `count_crossings=True`,
so the normal path pays nothing.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Counter", "CountingProxy", "counted", "counting", "unwrap"]


class Counter:
    """A mutable crossing count."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class CountingProxy:
    """Forwards to `obj`, counting each crossing into `counter`."""

    __slots__ = ("_obj", "_counter")

    def __init__(self, obj: Any, counter: Counter) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_counter", counter)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if callable(attr):
            counter = self._counter

            def call(*args: Any, **kwargs: Any) -> Any:
                counter.n += 1
                return attr(*map(unwrap, args), **{k: unwrap(v) for k, v in kwargs.items()})

            return call
        self._counter.n += 1  # a property read
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        self._counter.n += 1
        setattr(self._obj, name, unwrap(value))

    def __len__(self) -> int:
        self._counter.n += 1
        return len(self._obj)

    def __contains__(self, item: Any) -> bool:
        self._counter.n += 1
        return unwrap(item) in self._obj


def counting(counter: "Counter | None") -> Callable[[Any], Any]:
    """A function wrapping C++ objects in proxies that count into `counter` (None stays None);
    the identity when `counter` is None."""
    if counter is None:
        return lambda obj: obj
    return lambda obj: None if obj is None else CountingProxy(obj, counter)


def counted(fn: Callable, counter: "Counter | None") -> Callable:
    """`fn` (a C++ function), counting each call as one crossing into `counter`; `fn` itself when
    `counter` is None."""
    if counter is None:
        return fn

    def call(*args: Any) -> Any:
        counter.n += 1
        return fn(*map(unwrap, args))

    return call


def unwrap(obj: Any) -> Any:
    """The C++ object behind a proxy (or `obj` itself). Never raises."""
    return object.__getattribute__(obj, "_obj") if isinstance(obj, CountingProxy) else obj
