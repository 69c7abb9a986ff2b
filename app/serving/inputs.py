"""Decode and check predict inputs (JSON or .npy), encode outputs in the same encoding."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
from fastapi import Request

from app.errors import BadRequest, TooLarge, Unprocessable, UnsupportedFormat

NPY_TYPES = ("application/x-npy", "application/octet-stream")


MAX_BODY_BYTES = 256 * 1024 * 1024
"""Largest body read at all (the default predict body limit, GRAFT_PREDICT_MAX_BODY_BYTES)."""


async def read_body(request: Request) -> bytes:
    """The raw request body (an async dependency, so the `def` route stays in the threadpool).

    Reading stops at the predict body limit (GRAFT_PREDICT_MAX_BODY_BYTES): a 413.
    """
    settings = getattr(request.app.state, "settings", None)
    limit = getattr(settings, "predict_max_body_bytes", MAX_BODY_BYTES)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The body is larger than {limit} bytes; send fewer inputs per request.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The body is larger than {limit} bytes; send fewer inputs per request.")
        chunks.append(chunk)
    return b"".join(chunks)


def encoding_of(content_type: str | None) -> str:
    """"json" or "npy" from a Content-Type; UnsupportedFormat for anything else."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media in NPY_TYPES:
        return "npy"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    raise UnsupportedFormat(
        f"Content-Type {media!r} is not accepted; send application/json with {{\"inputs\": [...]}} "
        "or application/x-npy with an .npy array."
    )


def decode(body: bytes, encoding: str) -> np.ndarray:
    """The input array of a predict body (any dtype; `check` validates it)."""
    if not body:
        raise BadRequest("The request body is empty; send {\"inputs\": [...]} or an .npy array.")
    if encoding == "npy":
        fast = _plain_npy(body)
        if fast is not None:
            return fast
        try:
            return np.load(io.BytesIO(body), allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                raise Unprocessable("The .npy array holds Python objects; send a numeric array.") from None
            raise _not_npy(exc) from None
        except (OSError, EOFError) as exc:
            raise _not_npy(exc) from None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON; send {\"inputs\": [...]}.") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise Unprocessable("The JSON body needs an \"inputs\" field: a nested list, N × input_shape.")
    if not isinstance(payload["inputs"], list):
        raise Unprocessable("\"inputs\" must be a nested list of numbers, N × input_shape.")
    try:
        return np.asarray(payload["inputs"])
    except ValueError:
        raise Unprocessable(
            "\"inputs\" is ragged: its nested lists have different lengths; every input must have "
            "the composition's input shape."
        ) from None


# The header numpy.save writes for a plain numeric C-order array. np.load parses every header with
# ast.literal_eval, which cost more CPU than the rest of a one-input predict's decoding; a header of
# this exact form is read directly, anything else (and every error) goes through np.load.
_PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[iuf][1248])', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n"
)


def _plain_npy(body: bytes) -> np.ndarray | None:
    """The array of a plain .npy body (numeric dtype, C order, exact length), else None."""
    if body[:6] != b"\x93NUMPY" or len(body) < 12 or body[6] not in (1, 2, 3):
        return None
    size_bytes = 2 if body[6] == 1 else 4
    start = 8 + size_bytes
    end = start + int.from_bytes(body[8:start], "little")
    match = _PLAIN_HEADER.fullmatch(body[start:end])
    if match is None:
        return None
    try:
        shape = tuple(int(d) for d in match[2].split(b",") if d.strip())
    except ValueError:
        return None
    dtype = np.dtype(match[1].decode())
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        return None
    # A copy, as np.load makes: the request's bytes are read-only and torch wants writable arrays.
    return np.frombuffer(body, dtype=dtype, count=count, offset=end).reshape(shape).copy()


def _not_npy(exc: Exception) -> BadRequest:
    return BadRequest(f"The body is not a valid .npy file ({exc}); write it with numpy.save.")


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def check(x: np.ndarray, input_shape: tuple) -> np.ndarray:
    """`x` as a float32 batch of `input_shape`; 4xx naming what is wrong otherwise."""
    expected = _shape_text(input_shape)
    if x.dtype.kind not in "iuf":
        what = {"b": "booleans", "U": "strings", "S": "bytes", "O": "non-numbers (null, objects or "
                "strings)", "c": "complex numbers"}.get(x.dtype.kind, f"dtype {x.dtype}")
        raise Unprocessable(f"inputs hold {what}; send real numbers (they are read as float32).")
    if x.ndim == 0 or x.shape[0] == 0:
        raise Unprocessable(f"inputs is empty; send at least one input, shape {expected}.")
    batch_first = input_shape and input_shape[0] is None
    if not batch_first:
        raise Unprocessable("This composition's input shape has no batch dimension; it cannot be served.")
    if x.ndim != len(input_shape) or any(
        d is not None and int(d) != n for d, n in zip(input_shape[1:], x.shape[1:], strict=False)
    ):
        hint = (" (a single input needs the batch dimension: wrap it in a list)"
                if list(x.shape) == [d for d in input_shape[1:]] else "")
        raise Unprocessable(f"inputs have shape {list(x.shape)} but this composition expects "
                            f"{expected}, N inputs of shape {list(input_shape[1:])}{hint}.")
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, refused just below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise Unprocessable(f"inputs hold {bad} NaN or infinite value(s) (or numbers too large for "
                            "float32); send finite numbers.")
    return x


def encode_npy(y: np.ndarray) -> bytes:
    """The .npy file of `y`: for a float32 array its version 1.0 header is written here, as
    numpy.save writes it (np.save costs more than the rest of encoding a small output)."""
    if y.dtype == np.float32 and y.ndim >= 1:
        shape = repr(tuple(int(d) for d in y.shape))
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        # Padded with spaces to end, newline included, on a 64-byte boundary after the 10-byte preamble.
        header += " " * (-(10 + len(header) + 1) % 64) + "\n"
        little = np.ascontiguousarray(y, dtype="<f4")
        return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + little.tobytes()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(y), allow_pickle=False)
    return buf.getvalue()


def encode_json(y: np.ndarray) -> bytes:
    return json.dumps({"outputs": y.tolist()}, separators=(",", ":")).encode()
