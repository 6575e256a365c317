"""What the protocol cores need from the outside world, as interfaces.

A core is a :class:`DatagramEndpoint`: adapters call ``receive_datagram`` and
``handle_timer`` with the current time and then pull ``datagrams_to_send`` and
``get_timer``. Byte streams (share transfer, control) use
:class:`StreamNetwork`, whose asyncio implementation is real TCP and whose
simulated one is an in-memory pipe with the simulator's latency and bandwidth.
Time is always passed in; nothing in the cores reads a clock.
"""

from __future__ import annotations

from typing import Protocol

Address = tuple[str, int]


class DatagramEndpoint(Protocol):
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]: ...

    def get_timer(self) -> float | None: ...


class Clock(Protocol):
    def __call__(self) -> float: ...
