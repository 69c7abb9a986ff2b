"""The client's HTTP layer: one httpx connection pool, bearer auth, and errors as `GraftError`."""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class GraftError(Exception):
    """The server said no (status ≥ 400, `detail` is its sentence) or could not be reached (status 0)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}" if status else detail)


class ServerUnreachable(GraftError):
    """No HTTP answer at all: the server is down, or the URL is wrong."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach the Graft server at {url} ({reason}); start it with "
                            "`graft serve` or point --url / GRAFT_URL at it")


def _detail(response: httpx.Response) -> str:
    """The server's `detail` sentence, or a readable stand-in when the body is not Graft's JSON."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if detail is not None:  # FastAPI's list of validation errors, if a route lets one through
        return json.dumps(detail)[:500]
    return f"HTTP {response.status_code} {response.reason_phrase}"


class Http:
    """A small wrapper over `httpx.Client` that raises `GraftError` for every non-2xx answer."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, type(exc).__name__) from None
        if response.status_code >= 400:
            raise GraftError(response.status_code, _detail(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def stream_lines(self, path: str, timeout: float | None = None) -> Iterator[str]:
        """Lines of a streamed GET (server-sent events); raises `GraftError` before the first line."""
        try:
            with self._client.stream("GET", path, timeout=httpx.Timeout(timeout, connect=10.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise GraftError(resp.status_code, _detail(resp))
                yield from resp.iter_lines()
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, type(exc).__name__) from None

    def download(self, path: str, dest: Any) -> int:
        """Stream a GET body into the open binary file `dest`, following redirects; bytes written.

        A redirect to another host (the server's presigned S3 URL) is fetched without this client's
        headers: the bearer token is a secret for the Graft server only, and the URL carries its own
        signature (S3 refuses a request that holds both). Without a proxy in the way, that fetch uses
        the standard library's reader (`fetch_plain`), which does less work per byte than httpx.
        """
        url: httpx.URL | str = path
        client_headers, status = True, 0
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                with self._stream_get(url, client_headers) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        target = resp.url.join(resp.headers["location"])
                        client_headers = client_headers and _same_origin(target, resp.url)
                        url, status = target, resp.status_code
                        if not client_headers and not _proxied(target):
                            return fetch_plain(target, dest, timeout=self._client.timeout.read)
                        continue
                    if resp.status_code >= 400:
                        resp.read()
                        raise GraftError(resp.status_code, _detail(resp))
                    written = 0
                    for chunk in resp.iter_bytes(1 << 20):
                        dest.write(chunk)
                        written += len(chunk)
                    return written
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.url, type(exc).__name__) from None
        raise GraftError(status, f"more than {MAX_REDIRECTS} redirects downloading {path}")

    def _stream_get(self, url: httpx.URL | str, client_headers: bool):  # noqa: ANN202
        if client_headers:
            return self._client.stream("GET", url, follow_redirects=False)
        return httpx.stream("GET", url, timeout=self._client.timeout, follow_redirects=False)


MAX_REDIRECTS = 5
PLAIN_READ = 1 << 20


def fetch_plain(url: httpx.URL, dest: Any, *, timeout: float | None) -> int:
    """GET `url` with http.client, sending nothing but the URL, into `dest`; bytes written.

    httpx reads a body 64 KiB at a time through its HTTP parser; here each read fills a 1 MiB buffer
    straight from the socket (bench/results/registry.md: 0.90x of boto3 direct on a 256 MB artifact).
    """
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.host, url.port, timeout=timeout)
    try:
        conn.request("GET", url.raw_path.decode("ascii"))  # the path with its (signed) query
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(2000).decode("utf-8", "replace").strip()
            raise GraftError(resp.status, f"the artifact store refused the download: {text[:300]}")
        expected = resp.getheader("content-length")
        view, written = memoryview(bytearray(PLAIN_READ)), 0
        while n := resp.readinto(view):
            dest.write(view[:n])
            written += n
    except (OSError, http.client.HTTPException) as exc:
        raise GraftError(0, f"cannot fetch the artifact from {url.host} ({type(exc).__name__}); "
                            "retry, or check that this machine can reach the artifact store") from None
    finally:
        conn.close()
    if expected is not None and written != int(expected):  # readinto does not flag a cut-off body
        raise GraftError(0, f"the download from {url.host} stopped after {written} of {expected} bytes; "
                            "retry")
    return written


def _proxied(url: httpx.URL) -> bool:
    """Whether the environment routes `url` through a proxy (then httpx, which honours it, fetches)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.host)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent-event lines; comments and retry fields are skipped."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)
