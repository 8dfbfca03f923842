"""A platform that answers every delivery at once and counts them, for load and exactness benchmarks.

Run as `uvicorn tests.benchmarks.instant_platform:app --port N`; `GET /count` returns deliveries per path.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

received: Counter[str] = Counter()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    path = scope["path"]
    if scope["method"] == "GET" and path == "/count":
        body = json.dumps(dict(received)).encode()
    else:
        received[path] += 1
        body = b'{"ok":true}'
    # With its length given, the body is sent as it is rather than chunked, which the lean benchmark client reads.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
