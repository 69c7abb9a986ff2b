"""The body of a predict call once its composition is known: limit, decode, run, encode."""

from __future__ import annotations

import numpy as np
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from app.errors import TooLarge
from app.serving import inputs
from app.serving.runtime import ClientGone, ServingSpec, serving_of

INLINE_BYTES = 256 * 1024
"""Bodies (and outputs) up to this size are decoded (encoded) on the event loop: well under 1 ms."""


async def serve_predict(request: Request, spec: ServingSpec, body: bytes) -> Response:
    """Outputs of `spec`'s composition for a predict `body` whose caller was authorised.

    Shared by the route (a composition's first call in this process) and PredictFastPath.
    """
    # On the event loop: a request thread per call, blocked on its forward, cost CPU under load (32
    # threads contending for the GIL; docs/serving.md, earlier runs). Only what may take long
    # leaves it.
    settings = request.app.state.settings
    encoding = inputs.encoding_of(request.headers.get("content-type"))
    if len(body) > settings.predict_max_body_bytes:
        raise TooLarge(f"The body is larger than {settings.predict_max_body_bytes} bytes; "
                       "send fewer inputs per request.")
    if len(body) <= INLINE_BYTES:
        x = _decode(body, encoding, spec)
    else:  # a big body would hold the loop for milliseconds: decode it in a thread
        x = await run_in_threadpool(_decode, body, encoding, spec)
    try:
        y = await serving_of(request.app).predict(spec, x, request.receive)
    except ClientGone:  # nobody reads this answer; its rows were dropped before their forward
        return Response(status_code=499)
    if y.nbytes <= INLINE_BYTES:
        return _encode(y, encoding)
    return await run_in_threadpool(_encode, y, encoding)


def _decode(body: bytes, encoding: str, spec: ServingSpec) -> np.ndarray:
    return inputs.check(inputs.decode(body, encoding), spec.input_shape)


def _encode(y: np.ndarray, encoding: str) -> Response:
    if encoding == "npy":
        return Response(inputs.encode_npy(y), media_type="application/x-npy")
    return Response(inputs.encode_json(y), media_type="application/json")
