"""What bounds a client of the HTTPS API before anything of its request is parsed: how long
its request may take to arrive, however it spreads its bytes, and how deep its JSON body may
nest (measured before the parser, whose recursion a body of ``[`` x 100000 would exhaust)."""

from __future__ import annotations

import io
import re
import socket
import time
from typing import Any

#: Deepest nesting of arrays and objects in a body (a request's settings need four).
MAX_DEPTH = 32
_NESTING = re.compile(rb'[\[\]{}"\\]')


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not
    count); read before the text is parsed, so a body of ``[`` x 100000 is refused cheaply
    instead of exhausting the parser's recursion."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position of the character a backslash escapes
    for match in _NESTING.finditer(raw):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
            continue
        if char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


class RequestClock(io.RawIOBase):
    """The connection's reading side, with time limits: waiting for a request's first byte
    may take ``idle`` seconds; from that byte on, the whole request must arrive within
    ``request`` seconds, however the client spreads its bytes (``socket.settimeout`` alone
    bounds only the gap between two of them)."""

    def __init__(self, sock: socket.socket, idle: float, request: float) -> None:
        self.sock, self.idle, self.request = sock, idle, request
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            wait = self.idle
        else:
            wait = self.deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(wait)
        count = self.sock.recv_into(buffer)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self.request
        return count

    def next_request(self) -> None:
        self.deadline = None
