"""Background machinery started with the server (filled in by this domain)."""

from __future__ import annotations

from fastapi import FastAPI


def start(app: FastAPI) -> None:
    """Start this domain's background machinery."""


def stop(app: FastAPI) -> None:
    """Stop it."""
