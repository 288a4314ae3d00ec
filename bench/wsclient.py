"""A WebSocket client cheap enough to hold thousands of sockets in one process.

One ``asyncio.Protocol`` per socket, no task per socket: frames are parsed as bytes arrive
and stamped with ``time.monotonic()`` (one clock for every process on the machine, so a
sender's stamp and a receiver's stamp compare). Client frames are masked with a zero key:
the protocol demands the mask bit, and a benchmark needs no unpredictable key.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: the server never checks it


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (zero masking key, so the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + b"\x00\x00\x00\x00" + payload


class WsConn(asyncio.Protocol):
    """One client socket: the handshake, then frames; text frames go to ``on_text``."""

    def __init__(self, path: str, host: str, on_text: Callable[[WsConn, float, bytes], None]):
        self.path = path
        self.host = host
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.status = 0  # HTTP status of the upgrade answer (101 when upgraded)
        self.close_code: int | None = None
        self.lost = False
        self.wait_welcome = False  # ready at the upgrade, or (True) once the owner says so
        self.ready = asyncio.get_running_loop().create_future()  # set on upgrade or failure

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        if not self.status:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            self.status = int(head.split(" ", 2)[1])
            if self.status != 101:
                self._resolve()
                self.transport.close()
                return
            if not self.wait_welcome:
                self._resolve()
        self._frames(now)

    def _frames(self, now: float) -> None:
        buf = self.buf
        while len(buf) >= 2:
            opcode, size = buf[0] & 0x0F, buf[1] & 0x7F
            start = 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, start = struct.unpack_from("!H", buf, 2)[0], 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, start = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < start + size:
                return
            payload = bytes(buf[start : start + size])
            del buf[: start + size]
            if opcode == 0x1:
                self.on_text(self, now, payload)
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.send(0x8, payload[:2])
                self.transport.close()
                return
            elif opcode == 0x9:
                self.send(0xA, payload)

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one frame unless the socket is gone."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def send_json(self, message: dict) -> None:
        """Send a JSON text frame."""
        self.send(0x1, json.dumps(message).encode())

    def close(self, code: int = 1000) -> None:
        """A clean close: the close frame, then the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.send(0x8, struct.pack("!H", code))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._resolve()

    def _resolve(self) -> None:
        if not self.ready.done():
            self.ready.set_result(self.status)

    @property
    def open(self) -> bool:
        """Upgraded and not closed."""
        return self.status == 101 and not self.lost
