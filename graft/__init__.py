"""Graft's user side: the Python client (`graft.Client`) and the `graft` command line."""

from graft._http import GraftError, ServerUnreachable
from graft.client import Client, Job, JobFailed

__all__ = ["Client", "GraftError", "Job", "JobFailed", "ServerUnreachable"]
