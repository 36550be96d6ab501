"""TLS contexts: the node serving HTTPS, and the node (or its CLI) reaching https:// URLs.

The node speaks TLS itself, on its one port, when ``node.tls_cert_file`` and
``node.tls_key_file`` are set (``server_context``); the front wraps every accepted
connection in a trio ``SSLStream`` (web/front.py). Outgoing connections to ``https://``
URLs (peers, and the CLI's ``--url``) verify the server's certificate chain and host name
against ``client_context``: the system's trust store, or only the CA certificates of one
PEM file (``federation.ca_file``, the CLI's ``--ca-file``) for a private CA.

Both sides speak TLS 1.2 or 1.3 only, HTTP/1.1 only (ALPN): the front reads HTTP/1.1
request heads itself. Renegotiation is off: a cancelled receive on a trio ``SSLStream``
is safe except during a handshake, and the front cancels receives (timeouts, shutdown).

``looks_like_tls`` is the pure test the front applies to a connection's first byte:
a TLS connection opens with a handshake record (content type 22); a client that speaks
plain HTTP to the TLS port gets a plain-text answer saying so instead of a cut connection.
"""

from __future__ import annotations

import ssl

from .errors import ConfigError

#: the first byte of every TLS connection: a record of content type "handshake"
TLS_HANDSHAKE_RECORD = 0x16

#: what a client that sends plain HTTP to the TLS port gets (then the connection closes)
PLAIN_HTTP_BODY = b"This port speaks HTTPS: use an https:// URL.\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(PLAIN_HTTP_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + PLAIN_HTTP_BODY
)


def looks_like_tls(first: bytes) -> bool:
    """Whether a connection that begins with *first* (at least one byte) is a TLS client."""
    return bool(first) and first[0] == TLS_HANDSHAKE_RECORD


def looks_like_plain_http(first: bytes) -> bool:
    """Whether a connection that begins with *first* is a plain HTTP request (a method
    name starts with an uppercase ASCII letter)."""
    return bool(first) and 0x41 <= first[0] <= 0x5A


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    return context


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The node's TLS server context; ConfigError naming the file when it cannot be loaded.

    *cert_file* holds the node's certificate followed by any intermediate certificates
    (PEM), *key_file* its private key (PEM, unencrypted)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"node.tls: cannot read {exc.filename or cert_file!r}: no such file") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"node.tls: {cert_file!r} and {key_file!r} are not a PEM certificate chain and its "
            f"matching private key: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"node.tls: cannot read {exc.filename or cert_file!r}: {exc.strerror}") from None
    return _harden(context)


def client_context(ca_file: str | None = None, *, setting: str = "federation.ca_file") -> ssl.SSLContext:
    """A context that verifies servers (chain and host name): against the CA certificates
    in *ca_file* (PEM) only, or against the system's trust store when it is None (which
    honours ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``). ConfigError names *setting* when the
    file cannot be loaded."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {ca_file!r} does not exist") from None
    except ssl.SSLError as exc:
        problem = exc.reason or exc
        raise ConfigError(f"{setting}: {ca_file!r} holds no PEM CA certificate: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {ca_file!r}: {exc.strerror}") from None
    return _harden(context)
