"""A small synchronous client for a node's buffer API, used by the CLI.

Uploads stream from disk and downloads stream to a temp file that is verified before it
is renamed into place, so neither side ever holds a large buffer in memory and a damaged
download never appears under the requested name.

An ``https://`` node is verified against the system's trust store, or against the CA
certificates of the file named by ``SSL_CERT_FILE``; every command with ``--url`` also
takes ``--ca-file FILE``, which sets ``SSL_CERT_FILE`` for that command (after checking
that FILE holds a CA certificate), so that every HTTP client of the command uses it.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import click
import httpx

from .checksum import new_hasher, parse_checksum
from .errors import NodeError
from .tls import client_context

CHUNK = 1 << 20
Progress = Callable[[int], None]
_FRAME = struct.Struct(">32sq")


class ClientError(NodeError):
    """The node answered with an error, or could not be reached."""


def _use_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        client_context(value, setting="--ca-file")
    except NodeError as exc:
        raise click.BadParameter(str(exc).removeprefix("--ca-file: ")) from None
    os.environ["SSL_CERT_FILE"] = value  # httpx (trust_env) and OpenSSL's defaults read it


ca_file_option = click.option(
    "--ca-file",
    type=click.Path(dir_okay=False),
    expose_value=False,
    callback=_use_ca_file,
    help="CA certificate(s) (PEM) that an https:// node's certificate must chain to, "
    "instead of the system's trust store (the same as env SSL_CERT_FILE).",
)


def with_ca_file(option: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``--url`` option decorator that also adds ``--ca-file``."""
    return lambda command: option(ca_file_option(command))


def hash_file(path: str, progress: Progress | None = None) -> str:
    hasher = new_hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            if progress:
                progress(len(chunk))
    return hasher.hexdigest()


def decode_batch(body: bytes) -> dict[str, bytes | None]:
    """Decode a ``POST /api/v1/buffers/get`` answer; see node.roles.buffers_api."""
    out: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(body):
        raw, length = _FRAME.unpack_from(body, pos)
        pos += _FRAME.size
        if length >= 0:
            out[raw.hex()] = body[pos : pos + length]
            pos += length
        else:
            out[raw.hex()] = None
    return out


def base_url(url: str) -> str:
    """The node's base URL: a trailing ``/buffers`` (the buffer server's URL, as
    hashserver clients are given) is taken off; other paths (``/t/<token>``) stay."""
    url = url.rstrip("/")
    return url.removesuffix("/buffers") if url.endswith("/buffers") else url


def umask_mode(mode: int = 0o666) -> int:
    """*mode* as the process's umask lets a new file have it."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


class NodeClient:
    def __init__(self, url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
        self.url = base_url(url)
        path = urlsplit(self.url).path
        #: the URL has a path no node route lives under (a token prefix is one)
        self.odd_path = path if path not in ("", "/") and not path.startswith("/t/") else ""
        #: *headers*: e.g. ``Authorization: Bearer <token>``, sent with every request
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return self.http.request(method, self.url + path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the node at {self.url}: {exc}") from None

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            if _is_html(response) or (self.odd_path and response.status_code in (401, 403, 404, 405)):
                path = f", without a path such as {self.odd_path}" if self.odd_path else ""
                raise ClientError(
                    f"{what}: HTTP {response.status_code}: no such route at {self.url}: --url must be "
                    f"the node's base URL{path} (e.g. http://host:5533)"
                )
            text = response.text.strip()[:300]
            raise ClientError(f"{what}: HTTP {response.status_code}: {text}")

    def put_file(self, path: str, checksum: str, progress: Progress | None = None) -> int:
        """Upload a file whose checksum is known; return the HTTP status (200/201/202)."""

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        size = os.path.getsize(path)
        response = self._request(
            "PUT", f"/buffers/{checksum}", content=body(), headers={"Content-Length": str(size)}
        )
        self._check(response, f"upload of {path}")
        return response.status_code

    def has(self, checksums: list[str]) -> list[bool]:
        response = self._request("POST", "/api/v1/buffers/has", json=checksums)
        self._check(response, "has")
        return response.json()

    def download(
        self,
        checksum: str,
        out_path: str,
        progress: Progress | None = None,
        *,
        overwrite: bool = False,
        length: Callable[[int | None], None] | None = None,
    ) -> None:
        """Download to *out_path*, verified; nothing is left there if verification fails.
        The file gets the mode the umask allows; an existing *out_path* is an error
        unless *overwrite*. *length* is called with the announced size (or None) before
        the body arrives (to start a progress bar)."""
        parse_checksum(checksum)
        directory = os.path.dirname(os.path.abspath(out_path))
        if not overwrite and os.path.lexists(out_path):
            raise ClientError(f"{out_path} exists; use --force to overwrite it")
        if not os.path.isdir(directory):
            raise ClientError(f"cannot write {out_path}: directory {directory} does not exist")
        hasher = new_hasher()
        try:
            fd, tmp = tempfile.mkstemp(prefix=".seamless-get-", dir=directory)
        except OSError as exc:
            raise ClientError(f"cannot write {out_path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self.http.stream("GET", f"{self.url}/buffers/{checksum}") as response:
                        if response.status_code == 404 and not _is_html(response) and not self.odd_path:
                            raise ClientError(f"buffer {checksum} is not on the node")
                        if response.status_code >= 400:
                            response.read()
                            self._check(response, f"download of {checksum}")
                        if length is not None:
                            announced = response.headers.get("content-length", "")
                            length(int(announced) if announced.isdigit() else None)
                        for chunk in response.iter_bytes(CHUNK):
                            hasher.update(chunk)
                            out.write(chunk)
                            if progress:
                                progress(len(chunk))
                except httpx.HTTPError as exc:
                    raise ClientError(f"download of {checksum} failed: {exc}") from None
            if hasher.hexdigest() != checksum:
                raise ClientError(f"download of {checksum} does not match its checksum; discarded")
            os.chmod(tmp, umask_mode())
            _place(tmp, out_path, overwrite)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get_many(self, checksums: list[str]) -> dict[str, bytes | None]:
        response = self._request("POST", "/api/v1/buffers/get", json=checksums)
        self._check(response, "batched download")
        return decode_batch(response.content)


def _is_html(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/html")


def _place(tmp: str, out_path: str, overwrite: bool) -> None:
    """Rename *tmp* to *out_path*; without *overwrite*, never over a file that appeared
    meanwhile (a hard link fails if the name exists)."""
    if overwrite:
        os.replace(tmp, out_path)
        return
    try:
        os.link(tmp, out_path)
    except FileExistsError:
        raise ClientError(f"{out_path} exists; use --force to overwrite it") from None
    except OSError:  # no hard links here: check, then rename
        if os.path.lexists(out_path):
            raise ClientError(f"{out_path} exists; use --force to overwrite it") from None
        os.replace(tmp, out_path)
        return
    os.unlink(tmp)
