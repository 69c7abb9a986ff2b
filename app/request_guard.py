"""Refuse, at the edge, values no backend can store: NUL characters and integers beyond 64 bits.

PostgreSQL's text cannot hold NUL (0x00) and its integers are 32 or 64 bits wide; such values used to
reach the database and come back as 500s. This ASGI middleware answers 422 for a NUL in the URL path or
query, and for a NUL in any string (or key) or an integer outside signed 64-bit anywhere in a JSON body.
Narrower columns (ids and version numbers are 32-bit) are checked where they are used, and a value that
still gets through is answered 422 by the `DataError` handler in app/errors.py.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
# JSON bodies up to this size are checked; predict inputs (numbers only, often large) are not.
MAX_CHECKED_BODY = 4 * 1024 * 1024


def _problem(value: object, where: str = "body") -> str | None:
    """What is wrong with a parsed JSON value (the first problem found), or None."""
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{at} contains a NUL character (\\u0000), which cannot be stored; remove it"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                return f"{at} is {item}, outside the signed 64-bit range the server stores"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if "\x00" in key:
                    return f"a key in {at} contains a NUL character (\\u0000); remove it"
                stack.append((sub, f"{at}.{key}"))
        elif isinstance(item, list):
            stack.extend((sub, f"{at}[{i}]") for i, sub in enumerate(item))
    return None


class RequestGuard:
    """422 for NUL characters in the path, the query or a JSON body, and for JSON integers beyond 64 bits."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", ""):
            await _refuse(send, "The URL path contains a NUL character (%00); remove it.")
            return
        if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            await _refuse(send, "The query string contains a NUL character (%00); remove it.")
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if (scope.get("method") not in ("POST", "PUT", "PATCH") or content_type != b"application/json"
                or scope.get("path", "").endswith("/predict")):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body, more = b"", True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_CHECKED_BODY:
                break
        if not more and len(body) <= MAX_CHECKED_BODY:
            try:
                problem = _problem(json.loads(body))
            except (ValueError, RecursionError):
                problem = None  # not JSON: the route's own validation answers
            if problem is not None:
                await _refuse(send, f"Invalid request: {problem}.")
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, detail: str) -> None:
    raw = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
