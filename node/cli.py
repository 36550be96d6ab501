"""The ``seamless-node`` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import click
import trio

from . import __version__
from .cli_token import redact, token_option
from .client import with_ca_file
from .config import BUILT_ROLES, VALID_ROLES, Size, build_config, format_size
from .errors import ConfigError, NodeError

DEFAULT_URL = "http://127.0.0.1:5533"
log = logging.getLogger("seamless_node")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {redact(message)}", err=True)
    sys.exit(code)


def _setup_logging(level: str, fmt: str = "text") -> None:
    from .logs import setup_logging

    setup_logging(level, fmt)


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; silent otherwise."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True) as bar:
        yield bar.update


@contextlib.contextmanager
def _download_progress(label: str) -> Iterator[tuple[Callable[[int | None], None], Callable[[int], None]]]:
    """(start, update) for a download whose size is known once the answer comes: a
    progress bar on stderr when it is a terminal and the size is announced."""
    bar: Any = None

    def start(total: int | None) -> None:
        nonlocal bar
        if bar is None and total and sys.stderr.isatty():
            bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True)
            bar.__enter__()

    def update(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        yield start, update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


url_option = with_ca_file(click.option(
    "--url",
    envvar="SEAMLESS_NODE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of the node, http:// or https:// (env SEAMLESS_NODE_URL).",
))


def _first_leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seamless-node")
def main() -> None:
    """seamless-node: run the deployment roles of Seamless (buffers, database, jobless,
    compile, fair, cloudless) in one process, and talk to a running node.

    Start a node with `seamless-node run`; see `seamless-node COMMAND --help`.
    """


@main.command()
@click.option(
    "--roles",
    help=f"Comma-separated roles to run, from: {', '.join(VALID_ROLES)}. "
    f"Default: {','.join(BUILT_ROLES)} (every role built in this version).",
)
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 5533; 0 picks a free one).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the node keeps its data (default ./seamless-data).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML configuration file.")
@click.option("--readonly", is_flag=True, default=None, help="Serve the buffer store and the database read-only.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Logging detail.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]),
    help="text (default) or json: one JSON object per line, for log collectors.",
)
def run(
    roles: str | None,
    host: str | None,
    port: int | None,
    data_dir: str | None,
    config_file: str | None,
    readonly: bool | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Start a node and serve until Ctrl-C or SIGTERM.

    Settings come from defaults < the YAML file (--config) < environment variables
    SEAMLESS_NODE__SECTION__KEY < these flags. The node prints one line
    `seamless-node listening on http://HOST:PORT (roles: ...)` when it is ready.
    """
    flags = {
        "node": {"host": host, "port": port, "data_dir": data_dir, "roles": roles, "log_level": log_level,
                 "log_format": log_format},
        "buffers": {"readonly": readonly},
        "database": {"readonly": readonly},
    }
    try:
        config = build_config(config_file=config_file, flags=flags)
    except ConfigError as exc:
        _fail(str(exc), 2)
        return
    not_built = [r for r in config.node.roles if r not in BUILT_ROLES]
    if not_built:
        _fail(
            f"role(s) {', '.join(not_built)} not available in seamless-node {__version__} yet; "
            f"built roles: {', '.join(BUILT_ROLES)}",
            2,
        )
    _setup_logging(config.node.log_level, config.node.log_format)
    from .app import serve_node
    from .startup import check_port, prepare_data_dir, remove_created

    try:
        check_port(config.node.host, config.node.port)  # before anything is written
        created = prepare_data_dir(config)
    except ConfigError as exc:
        _fail(str(exc))
        return

    listening = threading.Event()

    async def main_task() -> None:
        # the first signal shuts down gracefully (node.shutdown_grace), a second at once
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                    await serve_node(config, stop=stop, task_status=task_status)
                    nursery.cancel_scope.cancel()  # stopped: no more signals to wait for

                urls = await nursery.start(serve)
                listening.set()  # from now on the data directory is the node's: never removed
                click.echo(f"seamless-node listening on {urls[0]} (roles: {','.join(config.node.roles)})")
                sys.stdout.flush()
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stop.is_set():
                        log.warning("received %s again: stopping at once", name)
                        nursery.cancel_scope.cancel()
                        break
                    log.info("received %s: shutting down", name)
                    stop.set()

    try:
        trio.run(main_task)
    except BaseException as exc:
        if not listening.is_set():
            remove_created(created)  # a failed start leaves no fresh data directory behind
        leaf = _first_leaf(exc)
        if isinstance(leaf, NodeError):
            _fail(str(leaf), 2 if isinstance(leaf, ConfigError) else 1)
        if isinstance(leaf, OSError):
            if leaf.filename:  # a file or directory, not the address
                _fail(f"cannot use {leaf.filename}: {leaf.strerror or leaf}")
            _fail(f"cannot start on {config.node.host}:{config.node.port}: {leaf.strerror or leaf}")
        raise
    log.info("stopped")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@url_option
@token_option
def put(files: tuple[str, ...], url: str) -> None:
    """Upload FILES to the node's buffer store.

    Prints one line per file, `CHECKSUM  FILE` (the format of sha256sum, so the list can be
    checked with `sha256sum -c`).
    """
    from .cli_token import auth_headers
    from .client import NodeClient, hash_file

    with NodeClient(url, headers=auth_headers()) as client:
        for path in files:
            size = os.path.getsize(path)
            with _progress(f"hashing {os.path.basename(path)}", size) as progress:
                checksum = hash_file(path, progress)
            try:
                with _progress(f"uploading {os.path.basename(path)}", size) as progress:
                    client.put_file(path, checksum, progress)
            except NodeError as exc:
                _fail(str(exc))
            click.echo(f"{checksum}  {path}")


@main.command()
@click.argument("checksums", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (one checksum only).")
@click.option(
    "-d", "--directory", type=click.Path(file_okay=False), help="Write each buffer to DIRECTORY/CHECKSUM."
)
@click.option("-f", "--force", is_flag=True, help="Overwrite files that exist already.")
@url_option
@token_option
def get(checksums: tuple[str, ...], output: str | None, directory: str | None, force: bool, url: str) -> None:
    """Download buffers by checksum, verified before they are written.

    With one checksum and no option, the buffer goes to standard output. Files are
    created with the umask's permissions; an existing file is left alone unless --force.
    A progress bar shows on a terminal. --url is the node's base URL (a URL ending in
    /buffers is taken as the buffer server's, and works too).
    """
    from .checksum import parse_checksum
    from .cli_token import auth_headers
    from .client import NodeClient

    try:
        for cs in checksums:
            parse_checksum(cs)
    except NodeError as exc:
        _fail(str(exc), 2)
    if output and len(checksums) != 1:
        _fail("--output takes exactly one checksum; use --directory for several", 2)
    if not output and not directory and len(checksums) != 1:
        _fail("several checksums need --directory", 2)
    with NodeClient(url, headers=auth_headers()) as client:
        try:
            if directory:
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as exc:
                    _fail(f"cannot create {directory}: {exc.strerror or exc}")
            for cs in checksums:
                target = output or (os.path.join(directory, cs) if directory else None)
                if target is None:
                    data = client.get_many([cs]).get(cs)
                    if data is None:
                        # too large for a batch, or absent: stream it through a temp file
                        import tempfile

                        with tempfile.TemporaryDirectory() as tmp:
                            path = os.path.join(tmp, cs)
                            with _download_progress(f"downloading {cs[:12]}") as (start, update):
                                client.download(cs, path, update, length=start)
                            with open(path, "rb") as f:
                                while chunk := f.read(1 << 20):
                                    sys.stdout.buffer.write(chunk)
                    else:
                        sys.stdout.buffer.write(data)
                    continue
                with _download_progress(f"downloading {cs[:12]}") as (start, update):
                    client.download(cs, target, update, overwrite=force, length=start)
        except NodeError as exc:
            _fail(str(exc))


@main.command()
@click.argument("checksums", nargs=-1, required=True)
@url_option
@token_option
def has(checksums: tuple[str, ...], url: str) -> None:
    """Tell which buffers the node has. Exit status 1 if any is missing."""
    from .checksum import parse_checksum
    from .cli_token import auth_headers
    from .client import NodeClient

    try:
        for cs in checksums:
            parse_checksum(cs)
        with NodeClient(url, headers=auth_headers()) as client:
            present = client.has(list(checksums))
    except NodeError as exc:
        _fail(str(exc))
        return
    for cs, here in zip(checksums, present):
        click.echo(f"{cs} {'present' if here else 'missing'}")
    if not all(present):
        sys.exit(1)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="The node's data directory (its buffers/ are checked).")
@click.option("--directory", type=click.Path(file_okay=False), help="A buffer directory to check instead (e.g. a hashserver's).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Take the directory from this YAML configuration.")
@click.option("--no-repair", is_flag=True, help="Only report; move nothing to quarantine.")
def fsck(data_dir: str | None, directory: str | None, config_file: str | None, no_repair: bool) -> None:
    """Re-hash every stored buffer; list and quarantine damaged ones.

    Compressed files are decoded and checked against their length sidecars. A file that
    does not verify while another tool's lock covers it is listed as LOCKED and left alone.
    Exit status 0 when the store is sound, 1 when damage was found (damaged files are moved
    to .quarantine/ in the store unless --no-repair).
    """
    from .store.buffers import BufferStore
    from .store.fsck import fsck as run_fsck

    try:
        config = build_config(config_file=config_file, flags={"node": {"data_dir": data_dir}})
    except ConfigError as exc:
        _fail(str(exc), 2)
        return
    root = directory or config.buffer_directory
    if not os.path.isdir(root):
        _fail(f"no buffer directory at {root}", 2)
    store = BufferStore(
        root, readonly=no_repair, layout=config.buffers.layout,  # type: ignore[arg-type]
        lock_timeout=float(config.buffers.lock_timeout),
    )
    try:
        store.open(clear_tmp=False)  # a running node may be writing there
    except NodeError as exc:
        _fail(str(exc), 2)
    total = sum(os.lstat(loc.path).st_size for _, loc in store.iter_files())
    with _progress("checking", total) as progress:
        report = run_fsck(store, repair=not no_repair, progress=progress)
    for path in report.corrupt:
        click.echo(f"CORRUPT {path}")
    for path in report.strays:
        click.echo(f"STRAY   {path}")
    for path in report.locked:
        click.echo(f"LOCKED  {path} (does not verify, but is still being written: locked or changing)")
    for path in report.quarantined:
        click.echo(f"moved to {path}")
    click.echo(
        f"checked {report.checked} buffers ({report.bytes_checked} bytes): "
        f"{len(report.corrupt)} corrupt, {len(report.strays)} stray"
        + (f", {report.stale_tmp} unfinished writes in .tmp" if report.stale_tmp else "")
    )
    if report.damaged:
        sys.exit(1)


@main.command("config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML configuration file.")
def show_config(config_file: str | None) -> None:
    """Print the effective configuration (defaults < YAML file < environment) as YAML.

    Useful to check what a node would run with before starting it; the output is itself a
    valid configuration file.
    """
    import dataclasses

    import yaml

    try:
        config = build_config(config_file=config_file)
    except ConfigError as exc:
        _fail(str(exc), 2)
        return

    def plain(value: object) -> object:
        if isinstance(value, Size):
            return format_size(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float):
            return float(value)
        return value

    click.echo(yaml.safe_dump(plain(dataclasses.asdict(config)), sort_keys=False), nl=False)


from .cli_db import db  # noqa: E402  (the `db` command group lives in its own module)

main.add_command(db)
from .cli_jobs import cancel, jobs, status, submit  # noqa: E402  (job commands, node/cli_jobs.py)

main.add_command(submit)
main.add_command(status)
main.add_command(cancel)
main.add_command(jobs)
from .cli_federation import key, keygen, link  # noqa: E402  (federation, node/cli_federation.py)
from .cli_peers import peers  # noqa: E402
from .cli_token import token  # noqa: E402  (bearer tokens, node/cli_token.py)

main.add_command(token)
main.add_command(keygen)
main.add_command(key)
main.add_command(link)
main.add_command(peers)
