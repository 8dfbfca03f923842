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
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
