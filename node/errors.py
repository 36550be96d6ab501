"""The node's error tree.

::

    NodeError                      anything the node reports on purpose
    ├── ConfigError                bad configuration: file, environment or flag (exit 2)
    ├── InvalidChecksum            a string that is not 64 lowercase hex characters (HTTP 400)
    ├── UpstreamUnavailable        a configured service (jobless.buffer_url, ...) cannot be
    │                              reached or refused the request (502)
    └── StoreError                 the buffer store refused or failed an operation
        ├── ChecksumMismatch       the bytes do not hash to the name they came with (400)
        ├── BufferTooLarge         over the configured maximum buffer size (413)
        ├── StoreFull              no space left on the store's filesystem (507)
        ├── StoreReadOnly          the store was opened read-only (405)
        ├── CorruptBuffer          a stored file no longer matches its name; quarantined
        └── UploadTimeout          the client sent its body too slowly (408)

Each error carries a message meant for the person who caused it: what was wrong and,
where there is one, what to do instead.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error the node raises deliberately."""

    #: HTTP status used when this error ends a request.
    http_status = 500


class ConfigError(NodeError):
    """The configuration (YAML file, environment, command line) is invalid."""

    http_status = 500


class InvalidChecksum(NodeError, ValueError):
    """A string that should be a checksum is not one."""

    http_status = 400


class UpstreamUnavailable(NodeError):
    """A service this node was configured to use could not be reached (connection, TLS
    verification, timeout) or answered an error."""

    http_status = 502


class StoreError(NodeError):
    """The buffer store could not do what was asked."""


class ChecksumMismatch(StoreError):
    http_status = 400


class BufferTooLarge(StoreError):
    http_status = 413


class StoreFull(StoreError):
    http_status = 507


class StoreReadOnly(StoreError):
    http_status = 405


class CorruptBuffer(StoreError):
    http_status = 500


class UploadTimeout(StoreError):
    http_status = 408


class InvalidBody(StoreError):
    """A request body that cannot be decoded (bad compression stream)."""

    http_status = 400
