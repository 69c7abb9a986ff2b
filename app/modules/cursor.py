"""Opaque keyset cursors: the last row's id, base64-encoded so clients do not build them."""

from __future__ import annotations

import base64
import binascii
import json

from app.errors import BadRequest

MAX_LIMIT = 500


def encode_cursor(last_id: int | str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | str | None:
    """The id after which the page starts; BadRequest for a cursor this server did not make."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
        if not isinstance(after, (int, str)) or isinstance(after, bool):
            raise ValueError
        if isinstance(after, int) and not 0 <= after <= 2**31 - 1:  # ids are 32-bit columns
            raise ValueError
        if isinstance(after, str) and "\x00" in after:
            raise ValueError
        return after
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadRequest("The cursor is not valid; pass the `next_cursor` of a previous page.") from None
