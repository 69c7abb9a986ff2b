"""Serving: the module cache, the inference executor, predict bodies and the fast path."""
