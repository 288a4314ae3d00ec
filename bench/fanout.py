"""``fanout``: one broadcast to every connected user, against the baseline's loop.

The service and the baseline run side by side, each with its own sockets and client
processes, and take turns: a service round, then a baseline round, and so on, so each
pair of rounds meets the same machine load (a shared machine's noise is larger than the
difference measured). Per round: the server's send loop (the service's
``notify_fanout_seconds`` metric: framing once, then the loop over the sockets, after the
broadcast was stored; the baseline times its own ``write_message`` loop over the same
number of sockets with the same frame text), and the time from the request until the last
client has the frame. The figures are medians over the rounds, and the median of the
per-pair ratios; the baseline says whether a full garbage collection ran inside its loop,
and the floor both loops share, one ``send`` system call per socket, is measured too.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import statistics
import time

from bench.clients import LoadClients
from bench.profile import profiled
from bench.report import Options, Report, ms
from bench.service import Baseline, Service

DEFAULT_USERS = 10_000
ROUNDS = 7
TARGET_LOOP_RATIO = 0.3
TARGET_OVER_FLOOR = 1.6  # the service's send loop against one plain send per socket
# About 300 bytes on the wire, like a typical short clinic announcement.
BROADCAST = {
    "audience": "all",
    "title": "Clinic closed on Friday",
    "message": "The clinic is closed on Friday 4 December for staff training. "
    "Online booking stays open.",
}


def frame_text(stored: dict) -> str:
    """The text of the service's frame for a stored broadcast (what the baseline sends)."""
    message = {"type": "notification", "notification": stored}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


async def arrivals(clients: LoadClients) -> list[float]:
    """When each client got the frame it waited for (monotonic clock)."""
    return [t for a in await clients.each("wait", timeout=60) for t in a["arrivals"]]


async def service_round(service: Service, clients: LoadClients) -> tuple[float, float, dict]:
    """One broadcast: the server's loop time, the time until all have it, the broadcast."""
    await clients.each("reset", target=1)
    before = await service.metrics()
    api = service.api()
    started = time.monotonic()
    try:
        stored = await api.json("POST", "/v1/broadcasts", BROADCAST, expect=201)
    finally:
        api.close()
    got = await arrivals(clients)
    after = await service.metrics()
    loop = after["notify_fanout_seconds_sum"] - before["notify_fanout_seconds_sum"]
    span = max(got) - started if got else float("nan")
    return loop, span, {"received": len(got), "stored": stored}


async def baseline_round(baseline: Baseline, clients: LoadClients, text: str) -> tuple:
    """The same frame text through the baseline's ``write_message`` loop."""
    await clients.each("reset", target=1)
    started = time.monotonic()
    answer = await baseline.broadcast(text)
    got = await arrivals(clients)
    span = max(got) - started if got else float("nan")
    return answer["loop_seconds"], span, {"received": len(got), "full_gc": answer["full_gc"]}


def send_floor(size: int, pairs: int = 2000, waiting: bool = False) -> float:
    """Seconds one non-blocking ``send`` of ``size`` bytes takes over loopback here: the
    system call both loops make per socket, whatever else they do.

    ``waiting``: the receiving ends belong to another process blocked in ``epoll``, as the
    load clients' are, so that a send also wakes a reader (information, not the target's
    floor)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(pairs)
    ends: list[socket.socket] = [listener]
    senders, receivers = [], []
    try:
        for _ in range(pairs):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            server.setblocking(False)
            ends += [client, server]
            senders.append(server)
            receivers.append(client)
        data = b"x" * size
        child = os.fork() if waiting else None
        if child == 0:  # the reader: waits in epoll, reads each socket's frame, leaves
            try:
                _read_all(receivers, size)
            finally:
                os._exit(0)
        if waiting:
            time.sleep(0.3)  # the reader is blocked in epoll now
        started = time.perf_counter()
        for sock in senders:
            sock.send(data)
        took = (time.perf_counter() - started) / pairs
        if child:
            os.waitpid(child, 0)
        return took
    finally:
        for sock in ends:
            sock.close()


def _read_all(receivers: list[socket.socket], size: int) -> None:
    selector = selectors.DefaultSelector()
    for sock in receivers:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, [0])
    left, deadline = len(receivers), time.monotonic() + 30
    while left and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            got = key.data
            got[0] += len(key.fileobj.recv(65536))
            if got[0] >= size:
                selector.unregister(key.fileobj)
                left -= 1


async def run(opts: Options, out: Report) -> None:
    """Both servers up with as many sockets each; alternate rounds; medians and ratios."""
    users = [f"u{i}" for i in range(opts.sized(DEFAULT_USERS))]
    ours = await LoadClients.start(len(users), opts.processes)
    theirs = await LoadClients.start(len(users), opts.processes)
    service = baseline = None
    try:
        service = await Service.start(opts.workdir, mongodb_uri=opts.mongodb_uri)
        baseline = await Baseline.start(opts.workdir)
        got = await ours.connect(service, [service.socket_path(u) for u in users])
        out.line(f"service connected={got['connected']} failed={got['failed']}")
        got = await theirs.connect(baseline, [baseline.socket_path(u) for u in users])
        out.line(f"baseline connected={got['connected']} failed={got['failed']}")
        _, _, warm = await service_round(service, ours)  # warm-up; its frame for the baseline
        text = frame_text(warm["stored"])
        await baseline_round(baseline, theirs, text)
        rows = []
        async with profiled(opts, out, service.pid, "fanout-rounds"):
            for i in range(1, ROUNDS + 1):
                loop, span, info = await service_round(service, ours)
                base_loop, base_span, base_info = await baseline_round(baseline, theirs, text)
                rows.append((loop, span, base_loop, base_span, base_info["full_gc"]))
                gc_note = " (a full GC ran in it)" if base_info["full_gc"] else ""
                out.line(
                    f"round {i}: service send_loop={ms(loop)} all_received={ms(span)} "
                    f"({info['received']} clients) | baseline send_loop={ms(base_loop)}{gc_note} "
                    f"all_received={ms(base_span)} ({base_info['received']} clients) "
                    f"| loop ratio {loop / base_loop:.2f}"
                )
    finally:
        for clients in (ours, theirs):
            await clients.stop()
        for server in (service, baseline):
            if server is not None:
                await server.stop()
    med = [statistics.median(col) for col in list(zip(*rows, strict=True))[:4]]
    out.line(
        f"median send_loop service={ms(med[0])} baseline={ms(med[2])} "
        f"(frame {len(text.encode())} bytes, {len(users)} sockets each)"
    )
    out.line(f"median all_received service={ms(med[1])} baseline={ms(med[3])}")
    clean = [r[0] / r[2] for r in rows if not r[4]]
    if clean:
        out.line(
            f"median loop ratio over the {len(clean)} rounds whose baseline loop ran no full "
            f"garbage collection: {statistics.median(clean):.2f}"
        )
    floor = send_floor(len(text.encode()))
    out.line(
        f"floor: one non-blocking send of the frame over loopback takes {floor * 1e6:.1f}us "
        f"here, {ms(floor * len(users))} for {len(users)} sockets, in both loops"
    )
    woken = send_floor(len(text.encode()), waiting=True)
    out.line(
        f"floor with the readers waiting in epoll in another process (each send wakes one; "
        f"information, not the target's floor): {woken * 1e6:.1f}us a send, "
        f"{ms(woken * len(users))} for {len(users)} sockets; service loop over it: "
        f"{med[0] / (woken * len(users)):.2f}"
    )
    out.line(f"median ratio all_received service/baseline: "
             f"{statistics.median(r[1] / r[3] for r in rows):.2f}")  # fmt: skip
    out.target("send_loop_ratio", statistics.median(r[0] / r[2] for r in rows), TARGET_LOOP_RATIO)
    over_floor = med[0] / (floor * len(users))
    out.line(f"ratio median send_loop service/floor: {over_floor:.2f}")
    out.target("send_loop_over_floor", over_floor, TARGET_OVER_FLOOR)
