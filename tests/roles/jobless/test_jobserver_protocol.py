"""/jobserver speaks seamless-jobserver 0.3 (docs/jobless.md), driven with plain
HTTP here; tests/interop drives it with the real Seamless clients."""

from __future__ import annotations

import json

import trio

from .support import Transformations, job_processes, wait_for


async def run_transformation(http, url, tf, tf_checksum=None, **extra):
    from node.transformation import transformation_checksum

    body = {"transformation_dict": tf, "tf_checksum": tf_checksum or transformation_checksum(tf),
            "tf_dunder": {}, "scratch": False, "strict_dunder": False, "record": False, **extra}
    return await http.request("GET", f"{url}/jobserver/run-transformation", json=body)


async def test_run_status_and_errors(job_node, http):
    url = job_node.url
    assert (await http.get(f"{url}/jobserver/healthcheck")).text == "OK"
    tfs = Transformations()
    tf = tfs.python("def add(a, b):\n    return a * 100 + b\n", a=4, b=3)
    await tfs.upload(http, url)
    r = await run_transformation(http, url, tf)
    assert r.status_code == 200, r.text
    answer = json.loads(r.text)
    assert answer["result_checksum"] == "97a58cc66d1cd6b51466af8ed52d6a38053b5572fee09a0ae8859c26b82bdf67"
    runtime = answer["record_runtime"]
    assert {"started_at", "finished_at", "wall_time_seconds", "cpu_user_seconds", "cpu_system_seconds",
            "memory_peak_bytes"} <= set(runtime)
    from node.transformation import transformation_checksum

    cs = transformation_checksum(tf)
    r = await http.get(f"{url}/jobserver/transformation-status/{cs}")
    assert r.json() == {"status": "done"}
    r = await http.get(f"{url}/jobserver/transformation-status/{'0' * 64}")
    assert r.json() == {"status": "not-running"}
    r = await http.get(f"{url}/jobserver/transformation-status/nothex")
    assert r.status_code == 400

    failing = tfs.python("def f():\n    raise RuntimeError('no luck')\n")
    await tfs.upload(http, url)
    r = await run_transformation(http, url, failing)
    assert r.status_code == 500 and "RuntimeError: no luck" in r.text

    r = await http.request("GET", f"{url}/jobserver/run-transformation", json={"tf_checksum": cs})
    assert r.status_code == 400 and r.text.startswith("Invalid payload")
    r = await run_transformation(http, url, tf, tf_checksum="1" * 64)
    assert r.status_code == 400 and "does not match" in r.text
    r = await run_transformation(http, url, tf, record=True)
    assert r.status_code == 409 and "record mode" in r.text


async def test_cancel_answers_the_long_poll(job_node, http):
    url = job_node.url
    tfs = Transformations()
    tf = tfs.bash("sleep 1000 & sleep 1000; wait")
    await tfs.upload(http, url)
    from node.transformation import transformation_checksum

    cs = transformation_checksum(tf)
    answers = []

    async def poll() -> None:
        answers.append(await run_transformation(http, url, tf))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        nursery.start_soon(poll)  # a second client waits for the same job
        await wait_for(lambda: len(job_processes()) >= 3, timeout=10)
        r = await http.get(f"{url}/jobserver/transformation-status/{cs}")
        assert r.json() == {"status": "running"}
        r = await http.post(f"{url}/jobserver/cancel-transformation/{cs}")
        assert r.json() == {"canceled": True, "status": "canceled"}
        await wait_for(lambda: len(answers) == 1, timeout=5)
        assert job_processes()  # the other client still waits: the job runs on
        r = await http.post(f"{url}/jobserver/cancel-transformation/{cs}")
        assert r.json()["canceled"] is True
        await wait_for(lambda: not job_processes(), timeout=2)
    assert [a.text for a in answers] == ["Transformation was canceled"] * 2
    r = await http.get(f"{url}/jobserver/transformation-status/{cs}")
    assert r.json() == {"status": "canceled"}
    r = await http.post(f"{url}/jobserver/cancel-transformation/{cs}")
    assert r.json() == {"canceled": False, "status": "canceled"}
