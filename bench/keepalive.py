"""A minimal HTTP/1.1 keep-alive client for the simulated raters of bench/queue.py.

The load generator shares the machine's cores with gunicorn and PostgreSQL, so every
millisecond of CPU it spends per judgment is taken from the system it measures. A general
client (httpx: a connection pool, header models, content decoders, retries of its own) costs a
few CPU-milliseconds per request; this one writes the request in one buffer and reads the
answer with two stream reads (head, then body), which is all a rater needs: one connection to
one loopback server, POST with a JSON body or none, answers with a Content-Length or chunked.

A connection the server closed while idle (gunicorn's keep-alive timeout) is opened again
before the next request, as httpx's pool does; a connection that breaks during a request, a
refused connection, a malformed answer and a timeout raise `TransportError`, as httpx's
`TransportError` does, and the caller counts it.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from urllib.parse import urlparse


class TransportError(Exception):
    """The request got no complete answer: connection refused, reset or closed, timeout, garbage."""


class Response:
    """A status, headers with lower-case names, and the whole body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self):
        return jsonlib.loads(self.content)


class Connection:
    """One keep-alive connection to `base_url` (http://host:port), opened on first use.

    Not for concurrent use: one rater, one request at a time. `timeout` bounds each request,
    connecting included.
    """

    def __init__(self, base_url: str, *, timeout: float = 60.0):
        url = urlparse(base_url)
        if url.scheme != "http":
            raise ValueError(f"plain http only, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 80
        self.host_header = url.netloc
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, *, headers: dict[str, str] | None = None, json=None) -> Response:
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        if json is not None:
            lines.append("Content-Type: application/json")
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(request)
        except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as error:
            # A connection closed mid-answer raises IncompleteReadError (an EOFError); a malformed
            # answer, ValueError; a head over the stream's 64 KiB limit, LimitOverrunError.
            await self.aclose()
            raise TransportError(f"{type(error).__name__}: {error}") from error

    async def _exchange(self, request: bytes) -> Response:
        if self._writer is not None and (self._reader.at_eof() or self._writer.is_closing()):
            await self.aclose()  # closed by the server while idle: open a new one, as a pool would
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1 answer: {status_line!r}")
        status_code = int(status)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status_code in (204, 304) or status_code < 200:
            content = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked(reader)
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:  # delimited by the end of the connection
            content = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            await self.aclose()
        return Response(status_code, headers, content)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
