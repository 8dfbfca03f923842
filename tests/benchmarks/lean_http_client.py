"""A minimal HTTP/1.1 keep-alive client for throughput benchmarks.

On a 2-core machine the load generator competes with the server it measures; httpx spends about 1.3 ms of CPU
per request, this client a small fraction of that, so the figures describe the server rather than the client.
It speaks just enough HTTP for our own server: GET, POST with a JSON body, responses with Content-Length.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


class LeanConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def open(cls, base_url: str) -> LeanConnection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, f"{parts.hostname}:{parts.port}")

    async def post(self, path: str, body: object, headers: dict[str, str]) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        return await self._exchange("POST", path, {"Content-Type": "application/json", **headers}, payload)

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        return await self._exchange("GET", path, headers, b"")

    async def _exchange(self, method: str, path: str, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self._host}",
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
