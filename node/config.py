"""NodeConfig: defaults < YAML file < environment < command-line flags.

Every setting lives in a section (``node``, ``buffers``, ...). In a YAML file::

    node:
      port: 5533
    buffers:
      max_buffer_size: 16GiB

in the environment as ``SEAMLESS_NODE__BUFFERS__MAX_BUFFER_SIZE=16GiB``. Unknown sections or
keys and values of the wrong type are errors (ConfigError, exit status 2 from the CLI) that
name the offending setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from .errors import ConfigError

VALID_ROLES = ("buffers", "database", "jobless", "compile", "fair", "cloudless")
BUILT_ROLES = ("buffers", "database", "jobless")
DEFAULT_ROLES = BUILT_ROLES
ENV_PREFIX = "SEAMLESS_NODE__"


class Size(int):
    """A byte count; accepts ``1048576``, ``"1MiB"``, ``"1.5 GB"``, ``"512k"``."""


class Seconds(float):
    """A duration in seconds; accepts ``30``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``."""


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_size(value: object) -> Size:
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return Size(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return Size(int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]))
    raise ValueError(f"expected a size such as 1048576, 64MiB or 2GB, got {value!r}")


def format_size(value: int) -> str | int:
    """*value* as a readable size that ``parse_size`` reads back exactly: ``64GiB``,
    ``16KiB``, ``2GB``; a byte count with no exact unit stays a number."""
    if value <= 0:
        return int(value)
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024),
                         ("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return int(value)


def parse_seconds(value: object) -> Seconds:
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return Seconds(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _TIME_UNITS:
            return Seconds(float(m.group(1)) * _TIME_UNITS[m.group(2).lower()])
    raise ValueError(f"expected a duration such as 30, 30s, 10m or 2h, got {value!r}")


@dataclass(frozen=True)
class NodeSection:
    """Where the node listens and keeps its data."""

    #: address to bind; anything but loopback exposes the node to the network
    host: str = "127.0.0.1"
    #: port to bind; 0 picks a free one (the node prints the URL it bound)
    port: int = 5533
    #: where the node keeps its buffers, database and keys
    data_dir: str = "./seamless-data"
    #: roles to run (buffers, database, jobless, compile, fair, cloudless); default: every built role
    roles: tuple[str, ...] = DEFAULT_ROLES
    #: debug, info, warning or error
    log_level: str = "info"
    #: text (one line per event, for people) or json (one JSON object per line, for collectors)
    log_format: str = "text"
    #: log one line per answered request at info (method, path, status, bytes, duration, client)
    access_log: bool = True
    #: on SIGTERM/SIGINT, seconds that requests in flight get to finish before they are cut
    #: (idle connections close at once; a second signal stops at once)
    shutdown_grace: Seconds = Seconds(2.0)
    #: a client must send a complete request head within this many seconds of connecting
    #: (or of its previous request); also how long an idle keep-alive connection stays open
    header_timeout: Seconds = Seconds(10.0)
    #: serve HTTPS (every route, on the one port): the node's certificate chain (PEM,
    #: the certificate first, then intermediates); needs tls_key_file. The TLS handshake
    #: must also end within header_timeout
    tls_cert_file: str | None = None
    #: the private key (PEM, unencrypted) of tls_cert_file; keep it readable by the node only
    tls_key_file: str | None = None
    #: names (host or host:port) clients may use for this node besides its listen address,
    #: localhost and the address they connected to; any other Host gets 421 (docs/security.md)
    public_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessSection:
    """Who may do what (see docs/security.md, "Scopes: who may do what")."""

    #: scopes per client network, e.g. {10.0.0.0/8: [buffers:read, results:read]}; exactly
    #: these when set; unset: loopback holds every scope but admin, other addresses none
    networks: dict[str, tuple[str, ...]] | None = None
    #: web origins (scheme://host[:port]) whose pages may make state-changing requests and
    #: read answers (CORS); empty: none, and no CORS headers are sent
    allowed_origins: tuple[str, ...] = ()
    #: the bearer tokens' hashes (`seamless-node token`); default: <data_dir>/tokens.json
    tokens_file: str | None = None


@dataclass(frozen=True)
class BuffersSection:
    """The buffer store and the buffer server role."""

    #: the buffer directory; default: <data_dir>/buffers
    directory: str | None = None
    #: read-only extra buffer directories consulted after the store
    extra_dirs: tuple[str, ...] = ()
    #: prefix or flat; default: detected from the directory (prefix for a new one)
    layout: str | None = None
    #: refuse writes (405); serve what is there
    readonly: bool = False
    #: larger uploads are refused with 413 (decompressed size for compressed uploads)
    max_buffer_size: Size = Size(64 * 1024**3)
    #: buffer writes are refused (507) when they would leave less free disk than this,
    #: counted as bytes land (decompressed, chunked, from peers and jobs): the headroom of
    #: the database and job directories when they share the filesystem
    reserve_free_bytes: Size = Size(64 * 1024**2)
    #: an upload that sends no byte for this long is ended with 408
    upload_idle_timeout: Seconds = Seconds(30.0)
    #: minimum average upload rate (bytes/s) once upload_grace has passed
    upload_min_rate: Size = Size(16 * 1024)
    #: seconds before upload_min_rate applies
    upload_grace: Seconds = Seconds(10.0)
    #: how long another tool's lock file in the buffer directory (.LOCK, <checksum>.LOCK,
    #: as hashserver honours them) makes reads of the buffers it covers wait, counted from
    #: the lock's modification time; 0 = lock files are ignored
    lock_timeout: Seconds = Seconds(120.0)
    #: how long a promised buffer (PUT /buffers/promise/<cs>) counts as present
    promise_ttl: Seconds = Seconds(600.0)
    #: worker threads for store I/O
    threads: int = 8
    #: fsync each buffer and its directory before acknowledging (off only for scratch stores)
    fsync: bool = True
    #: write uploads of direct_io_min_size or more with O_DIRECT, from the receive buffer
    #: straight to the disk, where the filesystem allows (smaller ones go through the page
    #: cache, which keeps a new buffer in memory for the reads that often follow)
    direct_io: bool = True
    #: the smallest upload written with O_DIRECT (at least 4 MiB): large uploads through
    #: the page cache pile up dirty pages faster than the disk takes them
    direct_io_min_size: Size = Size(256 * 1024**2)
    #: a large buffer the node hashed itself (on upload, or whole on an earlier read) is
    #: served again without re-hashing, straight from the file, for this many seconds as
    #: long as the file is unchanged (device, inode, size, mtime, ctime); 0 = re-hash
    #: every read. Damage below the filesystem shows at the next re-hash or `fsck`.
    verified_ttl: Seconds = Seconds(600.0)
    #: most checksums in one batched request (/has, multi-get)
    max_batch_count: int = 100_000
    #: most bytes in one batched download
    max_batch_bytes: Size = Size(256 * 1024**2)


@dataclass(frozen=True)
class DatabaseSection:
    """The result database (SQLite, seamless-database 2.x compatible) and its role."""

    #: the SQLite file; default: <data_dir>/seamless.db
    path: str | None = None
    readonly: bool = False
    #: read-only extra database files consulted after the node's own (shared caches)
    extra_files: tuple[str, ...] = ()
    #: largest request body accepted (a batch counts as one request)
    max_request_bytes: Size = Size(16 * 1024**2)
    #: most requests in one batched API call
    max_batch_count: int = 10_000
    #: read connections (and threads) for concurrent reads
    threads: int = 4
    #: answer point lookups (one transformation, expression, ...) on the event loop, not in
    #: a thread: microseconds from SQLite's cache; a lookup whose pages are not cached
    #: waits for the disk with the whole node (turn off for a database far larger than RAM)
    loop_reads: bool = True
    #: "normal" survives a crash of the node process; "full" also a power loss
    synchronous: str = "normal"


@dataclass(frozen=True)
class JoblessSection:
    """The job service (see docs/jobless.md)."""

    #: where jobs run: local (a pool of worker processes), dask or slurm
    backend: str = "local"
    #: local worker processes; 0 = the number of cores
    workers: int = 0
    #: job directories; default: <data_dir>/jobs (Slurm: must be shared with the compute nodes)
    jobs_dir: str | None = None
    #: fetch inputs from / store results at this buffer server instead of the node's store
    buffer_url: str | None = None
    #: look up / record results at this database server when the node runs no database role
    database_url: str | None = None
    max_wall_time: Seconds = Seconds(86400.0)
    #: memory of a job's whole process tree (its files included, in the sandbox); 0 = no limit
    max_memory: Size = Size(0)
    #: bytes a job may write in all (files, stdout, stderr; per file without the sandbox),
    #: and the size cap of each result buffer
    max_output: Size = Size(1024**3)
    #: processes and threads a job may have at once (in the sandbox)
    max_processes: int = 4096
    #: run every job in a sandbox (docs/security.md); false is unsafe: jobs then run as the
    #: node's user and see its data directory and key
    sandbox: bool = True
    #: the unprivileged user and group sandboxed jobs run as (not 0)
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    #: extra paths sandboxed jobs see, read-only (reference data, tools)
    sandbox_paths: tuple[str, ...] = ()
    #: which jobs reach the network: none, requested (a job whose environment's powers
    #: ask for "network") or always
    network: str = "none"
    #: a job nobody waits for any more (clients disconnected) is killed after this long
    orphan_grace: Seconds = Seconds(30.0)
    #: finished jobs remembered for status queries and listings
    history: int = 1000
    #: dask backend: the scheduler address (tcp://host:port)
    dask_scheduler: str | None = None
    #: slurm backend: partition (-p), extra "#SBATCH ..." lines, poll interval, Python on the nodes
    slurm_partition: str | None = None
    slurm_header: tuple[str, ...] = ()
    slurm_poll_interval: Seconds = Seconds(0.5)
    slurm_python: str | None = None


@dataclass(frozen=True)
class PeerConfig:
    """One peer node (an entry of ``federation.peers`` or of the peers file)."""

    #: the peer's node id (printed by its `seamless-node keygen`)
    node_id: str
    #: a short label for logs, metrics and `seamless-node peers`
    name: str = ""
    #: base URLs of the peer, tried in order; default: the endpoints in the links we issued it
    urls: tuple[str, ...] = ()
    #: link files: the grants we issued to the peer and the grants it issued to us
    links: tuple[str, ...] = ()
    #: fetch missing buffers from this peer; default: federation.fetch_buffers
    fetch_buffers: bool | None = None


@dataclass(frozen=True)
class FederationSection:
    """Signed links with nodes at other sites (see docs/federation.md, peers.example.yaml)."""

    #: auto: on when the key file exists; true: refuse to start without a key; false: off
    enabled: str = "auto"
    #: the node's private key; default: <data_dir>/node.key
    key_file: str | None = None
    #: CA certificates (PEM) that peers' https:// certificates must chain to, instead of
    #: the system's trust store (for a private CA); also verifies jobless.buffer_url and
    #: jobless.database_url
    ca_file: str | None = None
    #: peers listed in their own file, re-read when it changes; default: <data_dir>/peers.yaml
    peers_file: str | None = None
    #: peers listed here, in the node's configuration
    peers: tuple[PeerConfig, ...] = ()
    #: revoked links and keys, re-read when it changes; default: <data_dir>/revocations.yaml
    revocations_file: str | None = None
    #: GET /buffers/<cs> of a missing buffer fetches it from a peer that has it
    fetch_buffers: bool = True
    #: a peer fetch that delivers no byte for this long is abandoned (the next holder is tried)
    fetch_idle_timeout: Seconds = Seconds(10.0)
    #: minimum average rate of a peer fetch (bytes/s) once fetch_grace has passed
    fetch_min_rate: Size = Size(256 * 1024)
    #: seconds before fetch_min_rate applies to a peer fetch
    fetch_grace: Seconds = Seconds(5.0)
    #: connect and answer timeout of small requests to peers
    request_timeout: Seconds = Seconds(10.0)
    #: how long a peer's "I have it" answer is remembered
    presence_ttl: Seconds = Seconds(60.0)
    #: how long a peer's "I do not have it" answer is remembered (short: it may get it soon)
    absence_ttl: Seconds = Seconds(5.0)
    #: a peer that served wrong bytes is not asked again for this long
    bad_peer_cooldown: Seconds = Seconds(300.0)
    #: peers are pinged this often (reachable?, last seen)
    probe_interval: Seconds = Seconds(30.0)
    #: peers' signed revocation lists are fetched this often (and at once when a peer answers 403)
    revocations_interval: Seconds = Seconds(300.0)
    #: signed requests more than this far from our clock are refused
    max_clock_skew: Seconds = Seconds(60.0)
    #: transformations unknown here are looked up at peers granting results:read
    lookup_results: bool = True
    #: a submitted job may run at a peer granting us jobs:submit that holds more of its inputs
    forward_jobs: bool = True
    #: placement: what forwarding a job costs, in bytes of input that would have to move
    forward_cost: Size = Size(1024**2)
    #: placement: what a fully busy node costs, in bytes of input that would have to move
    load_cost: Size = Size(64 * 1024**2)
    #: a job is forwarded at most this many times (longer hop lists are refused)
    max_hops: int = 3
    #: inputs up to this many bytes in all travel with a forwarded job (larger: fetched by the executor)
    forward_inline: Size = Size(1024**2)
    #: a forwarded job's executor answers "still running" after this long; the origin asks again
    forward_poll: Seconds = Seconds(50.0)
    #: how old a peer's job load (from its ping answer) may be before placement asks again
    peer_status_ttl: Seconds = Seconds(5.0)


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    buffers: BuffersSection = field(default_factory=BuffersSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    jobless: JoblessSection = field(default_factory=JoblessSection)
    federation: FederationSection = field(default_factory=FederationSection)
    access: AccessSection = field(default_factory=AccessSection)

    @property
    def buffer_directory(self) -> str:
        return self.buffers.directory or os.path.join(self.node.data_dir, "buffers")

    @property
    def database_path(self) -> str:
        return self.database.path or os.path.join(self.node.data_dir, "seamless.db")

    @property
    def jobs_directory(self) -> str:
        return self.jobless.jobs_dir or os.path.join(self.node.data_dir, "jobs")

    @property
    def key_file(self) -> str:
        return self.federation.key_file or os.path.join(self.node.data_dir, "node.key")

    @property
    def peers_file(self) -> str:
        return self.federation.peers_file or os.path.join(self.node.data_dir, "peers.yaml")

    @property
    def revocations_file(self) -> str:
        return self.federation.revocations_file or os.path.join(self.node.data_dir, "revocations.yaml")

    @property
    def tokens_file(self) -> str:
        return self.access.tokens_file or os.path.join(self.node.data_dir, "tokens.json")

    @property
    def federation_directory(self) -> str:
        """Federation state (nonces, claims, peer status): <data_dir>/federation."""
        return os.path.join(self.node.data_dir, "federation")


_SECTION_TYPES = typing.get_type_hints(NodeConfig)


def _coerce(hint: Any, value: object, *, from_text: bool) -> object:
    """Convert *value* to the field type *hint*; raise ValueError with a plain message."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (from_text and value == ""):
            return None
        return _coerce(args[0], value, from_text=from_text)
    if hint is Size:
        return parse_size(value)
    if hint is Seconds:
        return parse_seconds(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return int(value)
        raise ValueError(f"expected a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if origin is dict:
        if from_text and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError(f"expected a mapping such as {{key: [a, b]}}, got {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {
            _coerce(key_hint, str(k), from_text=False): _coerce(value_hint, v, from_text=from_text)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return coerce_record(hint, value, from_text=from_text)
    if origin is tuple:
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(item_hint, v, from_text=from_text) for v in value)
    raise ValueError(f"unsupported setting type {hint!r}")  # pragma: no cover


def coerce_record(hint: Any, value: object, *, from_text: bool = False) -> object:
    """A mapping (from YAML) -> the dataclass *hint*, every field checked like a setting."""
    if not isinstance(value, dict):
        names = ", ".join(f.name for f in dataclasses.fields(hint))
        raise ValueError(f"expected a mapping of {names}, got {value!r}")
    fields = typing.get_type_hints(hint)
    unknown = [str(k) for k in value if k not in fields]
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    required = [f.name for f in dataclasses.fields(hint)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    values = {}
    for key, item in value.items():
        try:
            values[key] = _coerce(fields[key], item, from_text=from_text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return hint(**values)


def _section_fields(section: str) -> dict[str, Any]:
    return typing.get_type_hints(_SECTION_TYPES[section])


def _apply(
    overrides: dict[str, dict[str, object]],
    section: str,
    key: str,
    value: object,
    *,
    source: str,
    from_text: bool,
) -> None:
    if section not in _SECTION_TYPES:
        raise ConfigError(f"{source}: unknown section {section!r} (known: {', '.join(_SECTION_TYPES)})")
    fields = _section_fields(section)
    if key not in fields:
        raise ConfigError(
            f"{source}: unknown setting {section}.{key} (known in {section}: {', '.join(fields)})"
        )
    try:
        overrides.setdefault(section, {})[key] = _coerce(fields[key], value, from_text=from_text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {section}.{key}: {exc}") from None


def load_yaml(path: str) -> dict[str, dict[str, object]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    overrides: dict[str, dict[str, object]] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of settings")
        for key, value in values.items():
            _apply(overrides, str(section), str(key), value, source=path, from_text=False)
    return overrides


def load_environment(environ: Mapping[str, str]) -> dict[str, dict[str, object]]:
    overrides: dict[str, dict[str, object]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2:
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}SECTION__KEY")
        _apply(overrides, parts[0], parts[1], value, source=f"environment {name}", from_text=True)
    return overrides


def validate(config: NodeConfig) -> NodeConfig:
    unknown = [r for r in config.node.roles if r not in VALID_ROLES]
    if unknown:
        raise ConfigError(
            f"unknown role(s) {', '.join(unknown)}; valid roles: {', '.join(VALID_ROLES)}"
        )
    if not config.node.roles:
        raise ConfigError("no roles to run; choose from: " + ", ".join(VALID_ROLES))
    if not 0 <= config.node.port <= 65535:
        raise ConfigError(f"node.port must be between 0 and 65535, got {config.node.port}")
    if (config.node.tls_cert_file is None) != (config.node.tls_key_file is None):
        raise ConfigError("node.tls_cert_file and node.tls_key_file go together: set both or neither")
    if config.buffers.layout not in (None, "prefix", "flat"):
        raise ConfigError(f"buffers.layout must be prefix or flat, got {config.buffers.layout!r}")
    if config.node.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"node.log_level must be debug, info, warning or error, got {config.node.log_level!r}")
    if config.node.log_format not in ("text", "json"):
        raise ConfigError(f"node.log_format must be text or json, got {config.node.log_format!r}")
    if config.buffers.threads < 1:
        raise ConfigError("buffers.threads must be at least 1")
    if config.database.threads < 1:
        raise ConfigError("database.threads must be at least 1")
    if config.database.max_batch_count < 1:
        raise ConfigError("database.max_batch_count must be at least 1")
    if config.database.synchronous not in ("normal", "full"):
        raise ConfigError(f"database.synchronous must be normal or full, got {config.database.synchronous!r}")
    _validate_jobless(config.jobless)
    if config.jobless.network != "none" and config.access.networks is None:
        raise ConfigError(
            f"jobless.network: {config.jobless.network} lets jobs reach this machine's loopback, which holds "
            "every scope but admin by default: set access.networks to say what loopback may do "
            "(e.g. {127.0.0.0/8: [buffers:read]}), see docs/security.md"
        )
    _validate_access(config)
    _validate_federation(config.federation)
    return config


def _validate_federation(cfg: FederationSection) -> None:
    if cfg.enabled not in ("auto", "true", "false"):
        raise ConfigError(f"federation.enabled must be auto, true or false, got {cfg.enabled!r}")
    if not 1 <= cfg.max_clock_skew <= 600:
        raise ConfigError("federation.max_clock_skew must be between 1 and 600 seconds")
    if not 0 <= cfg.max_hops <= 16:
        raise ConfigError("federation.max_hops must be between 0 and 16")
    if cfg.revocations_interval < 1:
        raise ConfigError("federation.revocations_interval must be at least 1 second")
    if not 1 <= cfg.forward_poll <= 600:
        raise ConfigError("federation.forward_poll must be between 1 and 600 seconds")
    seen: set[str] = set()
    for peer in cfg.peers:
        problem = peer_problem(peer)
        if problem:
            raise ConfigError(f"federation.peers: {problem}")
        if peer.node_id in seen:
            raise ConfigError(f"federation.peers: node {peer.node_id} is listed twice")
        seen.add(peer.node_id)


def peer_problem(peer: PeerConfig) -> str | None:
    """What is wrong with a peer entry, or None (shared with the peers file loader)."""
    if not re.fullmatch(r"[a-z2-7]{52}", peer.node_id, re.ASCII):
        return f"{peer.node_id!r} is not a node id (52 characters, printed by `seamless-node keygen`)"
    for url in peer.urls:
        if not re.fullmatch(r"https?://[^\s/?#]+/?", url, re.ASCII):
            return f"peer {peer.name or peer.node_id}: url {url!r} must be http(s)://host[:port]"
    return None


def _validate_access(config: NodeConfig) -> None:
    from .access.policy import AccessPolicy

    try:
        AccessPolicy.from_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_jobless(cfg: JoblessSection) -> None:
    if cfg.backend not in ("local", "dask", "slurm"):
        raise ConfigError(f"jobless.backend must be local, dask or slurm, got {cfg.backend!r}")
    if cfg.workers < 0:
        raise ConfigError("jobless.workers must be 0 (one per core) or more")
    if cfg.backend == "dask" and not cfg.dask_scheduler:
        raise ConfigError("jobless.backend dask needs jobless.dask_scheduler (e.g. tcp://127.0.0.1:8786)")
    if cfg.max_wall_time <= 0:
        raise ConfigError("jobless.max_wall_time must be positive")
    if cfg.history < 1:
        raise ConfigError("jobless.history must be at least 1")
    if cfg.network not in ("none", "requested", "always"):
        raise ConfigError(f"jobless.network must be none, requested or always, got {cfg.network!r}")
    if cfg.sandbox_uid <= 0 or cfg.sandbox_gid <= 0:
        raise ConfigError("jobless.sandbox_uid and sandbox_gid must be unprivileged (above 0)")
    if cfg.max_processes < 1:
        raise ConfigError("jobless.max_processes must be at least 1")
    for path in cfg.sandbox_paths:
        if not os.path.isabs(path):
            raise ConfigError(f"jobless.sandbox_paths: {path!r} is not an absolute path")
    for key in ("buffer_url", "database_url"):
        url = getattr(cfg, key)
        if url is not None and not re.match(r"https?://", url):
            raise ConfigError(f"jobless.{key} must be an http(s) URL, got {url!r}")


def build_config(
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: dict[str, dict[str, object]] | None = None,
) -> NodeConfig:
    """Merge every source, lowest precedence first, and validate the result."""
    layers = []
    if config_file:
        layers.append(load_yaml(config_file))
    layers.append(load_environment(os.environ if environ is None else environ))
    flag_layer: dict[str, dict[str, object]] = {}
    for section, values in (flags or {}).items():
        for key, value in values.items():
            if value is not None:
                _apply(flag_layer, section, key, value, source="command line", from_text=isinstance(value, str))
    layers.append(flag_layer)
    merged: dict[str, dict[str, object]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    sections = {name: _SECTION_TYPES[name](**merged.get(name, {})) for name in _SECTION_TYPES}
    return validate(NodeConfig(**sections))
