"""One thread driving many agents' MQTT connections through epoll (simulated fleets).

A device runs one agent with one connection, and paho's own network thread
(``loop_start``) is right for it. A simulator running a thousand agents in one process
cannot do that: a thread per connection costs memory and CPU, and paho's thread uses
``select()``, which fails outright on file descriptors past 1023 (about 300 agents
in, each holding a socket and a socket pair). Here one thread owns every socket:
paho's external-loop callbacks register sockets with an epoll set, readable and
writable sockets get ``loop_read``/``loop_write``, and each connection gets
``loop_misc`` (keepalive pings) about once a second, a slice per pass. Connecting and
reconnecting (with backoff) happen on the same thread, so sockets are only ever
opened and closed there and a file descriptor number cannot be reused under us.

*Measured* (DESIGN.md): one such thread held 10,000 clients at 1 msg/s each.
"""

from __future__ import annotations

import heapq
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

_READ = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_WRITE = select.EPOLLOUT


class HubLink(Protocol):
    """What the hub needs of a connection (implemented by :class:`agent.mqtt_link.MqttLink`)."""

    client: Any  # paho.mqtt.client.Client

    def hub_connect(self) -> None: ...


class MqttHub:
    """Drives paho clients from one thread; ``start()`` before attaching links."""

    def __init__(self, *, misc_interval_s: float = 1.0, name: str = "mqtt-hub") -> None:
        self._epoll = select.epoll()
        self._links: dict[int, HubLink] = {}  # fd -> link
        self._attached: list[HubLink] = []
        self._misc_interval_s = misc_interval_s
        self._misc_next = 0
        self._misc_due = 0.0
        self._misc_at = time.monotonic()
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> MqttHub:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def clients(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------ any thread

    def call(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the hub thread, soon."""
        self._tasks.put(task)
        self._wake()

    def call_later(self, delay_s: float, task: Callable[[], None]) -> None:
        self.call(lambda: self._schedule(time.monotonic() + delay_s, task))

    def attach(self, link: HubLink) -> None:
        """Take ``link`` on: wire paho's socket callbacks to us and connect it."""
        client = link.client
        client.on_socket_open = lambda c, u, sock: self._register(link, sock)
        client.on_socket_close = lambda c, u, sock: self._unregister(sock)
        client.on_socket_register_write = lambda c, u, sock: self._want_write(sock, True)
        client.on_socket_unregister_write = lambda c, u, sock: self._want_write(sock, False)
        self.call(lambda: self._attach(link))

    def detach(self, link: HubLink) -> None:
        self.call(lambda: self._detach(link))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or we are closing

    def _want_write(self, sock: Any, on: bool) -> None:
        fd = sock.fileno()
        if fd < 0:
            return
        try:
            self._epoll.modify(fd, _READ | _WRITE if on else _READ)
        except (FileNotFoundError, OSError, ValueError):
            return  # closed meanwhile
        if not on:
            # paho skips registering a write that races with this unregistering (its
            # flag was still set): look again so a queued packet is never stranded.
            link = self._links.get(fd)
            if link is not None and link.client.want_write():
                try:
                    self._epoll.modify(fd, _READ | _WRITE)
                except (FileNotFoundError, OSError, ValueError):
                    pass

    # ------------------------------------------------------------ hub thread only

    def _register(self, link: HubLink, sock: Any) -> None:
        fd = sock.fileno()
        self._links[fd] = link
        self._epoll.register(fd, _READ | (_WRITE if link.client.want_write() else 0))

    def _unregister(self, sock: Any) -> None:
        fd = sock.fileno()
        self._links.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (FileNotFoundError, OSError, ValueError):
            pass

    def _attach(self, link: HubLink) -> None:
        self._attached.append(link)
        link.hub_connect()

    def _detach(self, link: HubLink) -> None:
        try:
            self._attached.remove(link)
        except ValueError:
            pass

    def _schedule(self, at: float, task: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (at, self._timer_seq, task))

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.05
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            try:
                events = self._epoll.poll(timeout)
            except OSError:
                if self._stop.is_set():
                    return
                raise
            for fd, mask in events:
                if fd == self._wake_r.fileno():
                    self._drain_wake()
                    continue
                self._guard(self._io, fd, mask)
            while True:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                self._guard(task)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, task = heapq.heappop(self._timers)
                self._guard(task)
            self._misc_slice()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _io(self, fd: int, mask: int) -> None:
        link = self._links.get(fd)
        if link is None:
            return
        if mask & _READ:
            link.client.loop_read()
        if mask & _WRITE and self._links.get(fd) is link:
            link.client.loop_write()

    def _misc_slice(self) -> None:
        """``loop_misc`` on a slice of the connections, so each gets one per interval."""
        count = len(self._attached)
        now = time.monotonic()
        elapsed, self._misc_at = now - self._misc_at, now
        if not count:
            return
        self._misc_due += count * elapsed / self._misc_interval_s
        todo = min(int(self._misc_due), count)
        self._misc_due -= todo
        for _ in range(todo):
            self._misc_next %= count
            link = self._attached[self._misc_next]
            self._misc_next += 1
            self._guard(link.client.loop_misc)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one connection's trouble must not stop the others
            self.errors += 1
            log.exception("mqtt hub: error driving a connection")
