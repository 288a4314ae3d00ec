"""WebSocket framing done once per message, so one notification costs one encode for all.

A server-to-client text frame is the same bytes for every socket (servers never mask), so
the hub frames a notification once and hands those bytes to each connection's stream.
"""

from __future__ import annotations

import json
import struct
from typing import Any

# One encoder for every frame: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: dict[str, Any]) -> bytes:
    """The compact UTF-8 JSON of a frame's payload."""
    return _JSON.encode(message).encode()


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed text frame carrying ``payload`` (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def frame(message: dict[str, Any]) -> bytes:
    """Encode and frame a message in one step."""
    return text_frame(encode(message))


def payloads(data: bytes) -> list[bytes]:
    """The payloads of one or more text frames written back to back (as ``frame`` makes
    them): what a transport other than the WebSocket (SSE) sends of the hub's bytes."""
    found, at, end = [], 0, len(data)
    while at < end:
        size, at = data[at + 1] & 0x7F, at + 2
        if size == 126:
            size, at = struct.unpack_from("!H", data, at)[0], at + 2
        elif size == 127:
            size, at = struct.unpack_from("!Q", data, at)[0], at + 8
        found.append(data[at : at + size])
        at += size
    return found
