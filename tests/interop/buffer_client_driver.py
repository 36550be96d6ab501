"""Drive a buffer server with the real Seamless 1.x client code, in its own process.

The Seamless clients use asyncio/aiohttp and process-wide state (a keep-alive thread,
``seamless.close()`` that can only run once), so the tests never import them; they run
this script in a subprocess instead::

    python buffer_client_driver.py MODE URL  < steps.json  > results.json

MODE ``client``: the steps call methods of one ``seamless_remote.buffer_client.BufferClient``
whose ``url`` is URL (exactly how ``seamless_remote.buffer_remote.define_extern_client``
sets up a "hashserver" client).

MODE ``config``: the buffer server is configured the way a Python user does it,
``seamless.config.set_remote_clients({"buffer": [{"url": URL, "readonly": False}]})``,
and the steps go through the public API (``Buffer.write()``, ``Checksum.resolve()``).

Each step is ``{"op": ..., ...}`` with bytes written as hex; the output is one JSON list
with, per step, ``{"result": ...}`` or ``{"error": "ExceptionType: message"}``. No
assertion is made here: the test process checks the results.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"}


async def run_client_steps(url: str, steps: list[dict]) -> list[dict]:
    from seamless import Buffer
    from seamless_remote.buffer_client import BufferClient

    client = BufferClient(readonly=False)
    client.url = url
    results: list[dict] = []
    for step in steps:
        op = step["op"]
        try:
            if op == "write":
                data = bytes.fromhex(step["data"])
                result = await client.write(step["checksum"], Buffer(data))
            elif op == "get":
                buf = await client.get(step["checksum"])
                result = None if buf is None else buf.content.hex()
            elif op == "buffer_lengths":
                result = await client.buffer_lengths(step["checksums"])
            elif op == "buffer_length":
                result = await client.buffer_length(step["checksum"])
            elif op == "promise":
                result = await client.promise(step["checksum"])
            elif op == "promise_write_get":
                # What a Seamless producer and consumer do around a promise: announce,
                # let a reader ask for it early, upload, and the reader gets the bytes.
                cs, data = step["checksum"], bytes.fromhex(step["data"])
                await client.promise(cs)
                has_after_promise = await client.buffer_lengths([cs])
                reader = asyncio.ensure_future(client.get(cs))
                await asyncio.sleep(step.get("delay", 0.5))
                reader_waited = not reader.done()
                await client.write(cs, Buffer(data))
                buf = await asyncio.wait_for(reader, 30)
                result = {
                    "has_after_promise": has_after_promise,
                    "reader_waited": reader_waited,
                    "got": None if buf is None else buf.content.hex(),
                }
            else:
                raise ValueError(f"unknown op {op!r}")
            results.append({"result": result})
        except Exception as exc:  # reported to the test, which decides
            results.append(_error(exc))
    from seamless_remote.client import close_all_clients

    close_all_clients()  # schedules the aiohttp sessions' close on this loop
    await asyncio.sleep(0.05)
    return results


def run_config_steps(url: str, steps: list[dict]) -> list[dict]:
    import seamless.config
    from seamless import Buffer, Checksum

    seamless.config.set_remote_clients({"buffer": [{"url": url, "readonly": False}], "database": []})
    results: list[dict] = []
    for step in steps:
        op = step["op"]
        try:
            if op == "buffer_write":
                buf = Buffer(bytes.fromhex(step["data"]))
                result = {"written": asyncio.run(buf.write()), "checksum": buf.get_checksum().hex()}
            elif op == "resolve":
                result = Checksum(step["checksum"]).resolve().content.hex()
            else:
                raise ValueError(f"unknown op {op!r}")
            results.append({"result": result})
        except Exception as exc:
            results.append(_error(exc))
    return results


def main() -> int:
    mode, url = sys.argv[1], sys.argv[2]
    steps = json.load(sys.stdin)
    import seamless

    started = time.monotonic()
    try:
        if mode == "client":
            results = asyncio.run(run_client_steps(url, steps))
        elif mode == "config":
            results = run_config_steps(url, steps)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        seamless.close()
    json.dump({"results": results, "seconds": time.monotonic() - started}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
