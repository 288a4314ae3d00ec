"""The baseline: the earlier system's design, a bare Tornado WebSocket server.

It keeps a set of sockets and loops ``write_message`` over them, which frames (and copies)
the message once per socket and schedules a write future per socket. Run as
``python -m bench.baseline --port P``; ``POST /broadcast`` sends its body as a text message
to every socket and answers how long the loop took. No authentication, no storage: it is
the floor to beat, not a service. With ``--by-user``, ``POST /send`` writes to one user's
sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import time

from tornado import web, websocket


class Socket(websocket.WebSocketHandler):
    """One client: joins the set on open, leaves it on close."""

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        self.user_id = self.get_argument("user_id", "")
        self.application.sockets.add(self)
        if self.application.by_user is not None:
            self.application.by_user.setdefault(self.user_id, set()).add(self)

    def on_close(self) -> None:
        self.application.sockets.discard(self)
        if self.application.by_user is not None:
            mine = self.application.by_user.get(self.user_id, set())
            mine.discard(self)
            if not mine:
                self.application.by_user.pop(self.user_id, None)


class Broadcast(web.RequestHandler):
    """Write the body to every socket with ``write_message``; time the loop."""

    def post(self) -> None:
        message = self.request.body.decode()
        sockets = self.application.sockets
        full = gc.get_stats()[2]["collections"]
        started = time.perf_counter()
        for sock in tuple(sockets):
            try:
                sock.write_message(message)
            except websocket.WebSocketClosedError:
                sockets.discard(sock)
        loop = time.perf_counter() - started
        full = gc.get_stats()[2]["collections"] - full  # full collections inside the loop
        self.write(json.dumps({"loop_seconds": loop, "sockets": len(sockets), "full_gc": full}))


class Send(web.RequestHandler):
    """Write ``text`` to the sockets of ``user_id`` (the latency scenario's baseline)."""

    def post(self) -> None:
        body = json.loads(self.request.body)
        for sock in tuple(self.application.by_user.get(body["user_id"], ())):
            with contextlib.suppress(websocket.WebSocketClosedError):
                sock.write_message(body["text"])
        self.write("{}")


class Accept(web.RequestHandler):
    """Parse a JSON body and answer it back, 201: the bare HTTP cost of an ingest request."""

    def post(self) -> None:
        self.set_status(201)
        self.write(json.dumps({"success": True, "data": json.loads(self.request.body)}))


class Ready(web.RequestHandler):
    def get(self) -> None:
        self.write(json.dumps({"sockets": len(self.application.sockets)}))


async def main(port: int, by_user: bool) -> None:
    """Serve until SIGTERM."""
    app = web.Application(
        [
            (r"/ws", Socket),
            (r"/broadcast", Broadcast),
            (r"/send", Send),
            (r"/accept", Accept),
            (r"/ready", Ready),
        ]
    )
    # Only the latency scenario indexes sockets by user (for /send): not the seed's design,
    # and it would add to the memory per socket that the connections scenario compares.
    app.sockets, app.by_user = set(), ({} if by_user else None)
    server = app.listen(port, "127.0.0.1")  # the seed's way: Tornado's default backlog
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--by-user", action="store_true", help="index sockets for /send")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.by_user))
