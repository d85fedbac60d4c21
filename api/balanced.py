"""Several API processes behind one port, with the connections spread evenly between them.

uvicorn's multi-process mode shares the listening socket, and whichever process wakes first accepts
every connection waiting. With a few keep-alive clients (a recommender's connection pool), one process
may hold most of them for their lifetime while another idles; measured at 1M items with 8 wrk clients
on 2 processes, splits from 4/4 to 8/0 between runs gave /v1/recall p99 of 32 ms (4/4), 49 ms (6/2)
and 70 ms (8/0, at half the throughput).

Here the parent process accepts, and hands each connection (its file descriptor, over a Unix socket
pair) to the ready process holding the fewest open connections. The parent keeps its own copy of each
descriptor, never reading from it, to see the client leave the moment it leaves (epoll's RDHUP): a
process busy with queued requests is late to notice, and a client that reconnects at once (a pool
renewing its connections) was handed to the process that only seemed busier; back-to-back wrk runs
split 8 connections 7/1 that way. A process reports the connections it ends itself (a keep-alive
timeout, an error), by the number the parent gave each one; the parent then closes its copy, which
ends the connection for the client. A process that dies is replaced; its connections are closed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import select
import selectors
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

import uvicorn

# Between parent and process, fixed-size records: a kind byte and a connection number.
RECORD = 9
HANDED, READY, ENDED_HERE = b"c", b"r", b"x"  # a connection for you; ready to serve; I ended this connection
ENDED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR  # a connection's end, seen without reading it


@dataclass
class Process:
    number: int
    popen: subprocess.Popen
    channel: socket.socket  # the parent's end of the pair
    ready: bool = False
    started: bool = False  # it was ready once (a process that dies before that fails the whole server)
    # its open connections: the parent's descriptor -> (the parent's copy, the connection's number), and back
    connections: dict[int, tuple[socket.socket, int]] = field(default_factory=dict)
    numbers: dict[int, int] = field(default_factory=dict)
    unread: bytes = b""  # the start of a record not received whole yet

    @property
    def open(self) -> int:
        return len(self.connections)


def serve_balanced(app: str, workers: int, *, host: str, port: int, options: dict) -> int:
    """Serve the ASGI app factory `app` ("module:function") from `workers` processes on host:port until
    SIGTERM or SIGINT (exit status 0), or until a process fails before it ever served (1).
    options: uvicorn.Config keyword arguments for each process (log level, access log)."""
    listener = socket.create_server((host, port), backlog=2048)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    ends = select.epoll()  # the handed connections, watched for their end only
    selector.register(ends.fileno(), selectors.EVENT_READ, "ends")
    owner: dict[int, Process] = {}  # the parent's descriptor of a connection -> the process serving it
    processes: dict[int, Process] = {}
    stopping, status = False, 0

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def spawn(number: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        popen = subprocess.Popen(
            [sys.executable, "-m", "mmrecall.api.balanced", str(child_end.fileno()), app, json.dumps(options)],
            pass_fds=[child_end.fileno()],
        )
        child_end.close()
        parent_end.setblocking(False)
        processes[number] = Process(number, popen, parent_end)
        selector.register(parent_end, selectors.EVENT_READ, number)

    for number in range(workers):
        spawn(number)
    print(f"serving http://{host}:{port} from {workers} processes, connections balanced", file=sys.stderr)
    accepting = False
    try:
        while not stopping:
            ready = [p for p in processes.values() if p.ready]
            if ready and not accepting:  # connections wait in the backlog until a process can take them
                selector.register(listener, selectors.EVENT_READ, None)
            elif accepting and not ready:
                selector.unregister(listener)
            accepting = bool(ready)
            for key, _ in selector.select(timeout=0.5):
                if key.data is None:
                    hand_over(listener, ready, ends, owner)
                elif key.data == "ends":
                    for fd, _ in ends.poll(0):
                        forget(fd, ends, owner)
                else:
                    process = processes[key.data]
                    ended = listen_to(process)
                    if ended is None:  # its end closed: it is exiting
                        selector.unregister(key.fileobj)
                    for number in ended or ():
                        if number in process.numbers:
                            forget(process.numbers[number], ends, owner)
            for process in list(processes.values()):
                if process.popen.poll() is None or stopping:
                    continue
                if not process.started:  # it could not start (settings, the snapshot): neither will another
                    print(
                        f"API process {process.popen.pid} failed to start (code {process.popen.returncode})",
                        file=sys.stderr,
                    )
                    stopping, status = True, 1
                else:
                    print(
                        f"API process {process.popen.pid} exited (code {process.popen.returncode}); starting another",
                        file=sys.stderr,
                    )
                    if process.channel.fileno() in selector.get_map():
                        selector.unregister(process.channel)
                    process.channel.close()
                    for fd in list(process.connections):  # its clients see the end, not a silent hang
                        forget(fd, ends, owner, end_it=True)
                    spawn(process.number)
    finally:
        selector.close()
        listener.close()
        for fd in list(owner):
            forget(fd, ends, owner)
        ends.close()
        for process in processes.values():
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in processes.values():
            try:
                process.popen.wait(30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
    return status


def hand_over(listener: socket.socket, ready: list[Process], ends: select.epoll, owner: dict[int, Process]) -> None:
    """Accept what is waiting; each connection goes to the ready process with the fewest open ones."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        number = next(CONNECTION_NUMBERS)
        for target in sorted(ready, key=lambda p: (p.open, p.number)):
            try:
                socket.send_fds(target.channel, [record(HANDED, number)], [connection.fileno()])
            except OSError:  # that process is gone; the supervising loop replaces it
                continue
            target.connections[connection.fileno()] = (connection, number)
            target.numbers[number] = connection.fileno()
            owner[connection.fileno()] = target
            ends.register(connection.fileno(), ENDED)
            break
        else:
            connection.close()


CONNECTION_NUMBERS = itertools.count(1)


def record(kind: bytes, number: int = 0) -> bytes:
    return kind + number.to_bytes(RECORD - 1, "little")


def records(data: bytes) -> list[tuple[bytes, int]]:
    return [(data[i : i + 1], int.from_bytes(data[i + 1 : i + RECORD], "little")) for i in range(0, len(data), RECORD)]


def forget(fd: int, ends: select.epoll, owner: dict[int, Process], *, end_it: bool = False) -> None:
    """A handed connection ended: stop counting it and close the parent's copy. end_it: shut it down too
    (its process died, so the client sees the end instead of waiting)."""
    process = owner.pop(fd, None)
    if process is None:
        return
    ends.unregister(fd)
    connection, number = process.connections.pop(fd)
    del process.numbers[number]
    if end_it:
        end(connection)
    connection.close()


def listen_to(process: Process) -> list[int] | None:
    """Read what the process reported: the numbers of the connections it ended, or None once its end of
    the channel is closed."""
    try:
        data = process.channel.recv(4096)
    except (BlockingIOError, InterruptedError):
        return []
    except OSError:
        data = b""
    if not data:
        process.ready = False
        return None
    buffered = process.unread + data
    whole = len(buffered) // RECORD * RECORD
    reported, process.unread = records(buffered[:whole]), buffered[whole:]
    process.ready = process.ready or any(kind == READY for kind, _ in reported)
    process.started = process.started or process.ready
    return [number for kind, number in reported if kind == ENDED_HERE]


class HandedServer(uvicorn.Server):
    """A uvicorn server that listens on nothing: its connections come over `channel` from the parent."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if self.should_exit:
            return
        loop, channel, server = asyncio.get_running_loop(), self.channel, self
        adopting: set[asyncio.Task] = set()

        def report_ended(number: int) -> None:
            try:
                channel.send(record(ENDED_HERE, number))
            except OSError:  # the parent is gone; this process is on its way out
                pass

        class Numbered(self.config.http_protocol_class):
            """Reports the connection's number when it ends: the parent holds a copy of the descriptor, so
            the client sees the end once the parent closes that copy too."""

            number = 0

            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                report_ended(self.number)

        def receive() -> None:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 1024, 256)
            except (BlockingIOError, InterruptedError):
                return
            if not message:  # the parent is gone
                loop.remove_reader(channel.fileno())
                server.should_exit = True
                return
            for fd, (_, number) in zip(fds, records(message), strict=False):  # one record per descriptor
                protocol = Numbered(
                    config=server.config, server_state=server.server_state, app_state=server.lifespan.state
                )
                protocol.number = number
                task = loop.create_task(loop.connect_accepted_socket(lambda p=protocol: p, socket.socket(fileno=fd)))
                adopting.add(task)  # the loop keeps only a weak reference to a task
                task.add_done_callback(lambda task, number=number: adopted(task, number))

        def adopted(task: asyncio.Task, number: int) -> None:
            adopting.discard(task)
            if task.cancelled() or task.exception() is not None:  # e.g. the client left meanwhile
                report_ended(number)

        channel.setblocking(False)
        loop.add_reader(channel.fileno(), receive)
        channel.send(record(READY))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        except (ValueError, OSError):
            pass
        await super().shutdown(sockets)


def end(connection: socket.socket) -> None:
    """Shut a connection down for everyone holding its descriptor (the client sees it end)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already ended
        pass


def worker_main(argv: list[str]) -> None:
    fd, app, options = int(argv[0]), argv[1], json.loads(argv[2])
    config = uvicorn.Config(app, factory=True, **options)
    HandedServer(config, socket.socket(fileno=fd)).run()


if __name__ == "__main__":
    worker_main(sys.argv[1:])
