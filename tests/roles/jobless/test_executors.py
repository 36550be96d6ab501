"""The executors and their limits, through one real pool worker process (no node).

Results are compared with what Seamless 1.x computes in-process for the same
transformation (known checksums), failures by their kind and text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import trio

from node import celltypes
from node.roles.jobless.backends.local import LocalBackend
from node.roles.jobless.spec import JobOutcome, JobSpec, Limits, PinInput

from .support import job_processes, wait_for


def pin(name: str, value, celltype: str = "mixed") -> PinInput:
    return PinInput(name, celltype, celltypes.serialize(value, celltype))


def spec(language: str, code: str, celltype: str = "mixed", *pins: PinInput, **limits) -> JobSpec:
    return JobSpec("ab" * 32, language, code, "result", celltype, tuple(pins), Limits(**limits))


@pytest.fixture
async def backend(tmp_path: Path, nursery: trio.Nursery):
    backend = LocalBackend(1, str(tmp_path / "jobs"))
    await backend.start(nursery)
    yield backend
    await backend.aclose()


async def run(backend: LocalBackend, job: JobSpec) -> JobOutcome:
    return await backend.run(job, lambda: None)


def value_of(outcome: JobOutcome, celltype: str):
    assert outcome.ok, outcome.error
    return celltypes.deserialize(outcome.buffers[outcome.result], celltype)


async def test_python_function_block_lambda_expression(backend):
    add = "def add(a, b):\n    return a * 100 + b\n"
    outcome = await run(backend, spec("python", add, "mixed", pin("a", 4), pin("b", 3)))
    # seamless-transformer's delayed(add)(4, 3): result checksum of mixed 403
    assert outcome.result == hashlib.sha256(b"403\n").hexdigest()
    assert outcome.stats["wall_time_seconds"] > 0
    block = "import math\nresult = math.sqrt(x)"
    assert value_of(await run(backend, spec("python", block, "plain", pin("x", 16.0))), "plain") == 4.0
    lam = "lambda x, y: x + y"
    assert value_of(await run(backend, spec("python", lam, "int", pin("x", 1), pin("y", 2))), "int") == 3
    expr = "x * 2"
    assert value_of(await run(backend, spec("python", expr, "str", pin("x", "ab", "str"))), "str") == "abab"


async def test_python_celltypes_in_and_out(backend):
    code = (
        "def f(t, b, n, s, i, fl, bo, arr, p):\n"
        "    return {'t': t, 'b': len(b), 'n': n.sum(), 's': s, 'i': i, 'fl': fl, 'bo': bo,\n"
        "            'arr': arr * 2, 'p': p}\n"
    )
    pins = [
        pin("t", "some text", "text"), pin("b", b"\x00\x01\x02", "bytes"),
        pin("n", np.arange(4), "binary"), pin("s", "x", "str"), pin("i", 7, "int"),
        pin("fl", 2.5, "float"), pin("bo", True, "bool"), pin("arr", np.ones(3, "f4"), "mixed"),
        pin("p", {"k": [1, "é"]}, "plain"),
    ]
    outcome = await run(backend, spec("python", code, "mixed", *pins))
    value = value_of(outcome, "mixed")
    assert value["t"] == "some text" and value["b"] == 3 and value["n"] == 6
    assert (value["s"], value["i"], value["fl"], value["bo"]) == ("x", 7, 2.5, True)
    assert value["arr"].dtype == np.float32 and list(value["arr"]) == [2, 2, 2]
    assert value["p"] == {"k": [1, "é"]}
    # the buffer is the Seamless mixed stream of that value, byte for byte
    reference = pytest.importorskip("seamless.checksum.serialize")
    expected = reference.serialize_sync(value, "mixed", use_cache=False)
    assert outcome.buffers[outcome.result] == expected


async def test_python_failures(backend):
    outcome = await run(backend, spec("python", "def f():\n    raise ValueError('boom')\n"))
    assert outcome.kind == "error"
    assert "ValueError: boom" in outcome.error and "<transformer code>" in outcome.error
    outcome = await run(backend, spec("python", "def f():\n    return None\n"))
    assert outcome.error == "Result is empty"
    outcome = await run(backend, spec("python", "x = 1\n"))
    assert "Output variable name 'result' undefined" in outcome.error
    outcome = await run(backend, spec("python", "def f(:\n"))
    assert "not valid Python" in outcome.error
    outcome = await run(backend, spec("python", "def f():\n    return {1j}\n", "plain"))
    assert not outcome.ok and "plain" in outcome.error


async def test_bash_pins_env_and_result(backend):
    script = (
        'echo "$greeting $count" > out.txt\n'
        "cat data.bin >> out.txt\n"
        "cat numbers >> out.txt\n"
        "cat greeting count >> out.txt\n"
        "ls > listing\n"
        "cat out.txt listing > RESULT\n"
    )
    pins = [
        pin("greeting", "hello", "str"), pin("count", 3, "int"), pin("data.bin", b"raw\n", "bytes"),
        pin("numbers", [1, 2], "plain"),
    ]
    outcome = await run(backend, spec("bash", script, "bytes", *pins))
    assert outcome.ok, outcome.error
    assert outcome.buffers[outcome.result] == (
        b"hello 3\nraw\n[1, 2]hello\n3\ncount\ndata.bin\ngreeting\nlisting\nnumbers\nout.txt\n"
    )


async def test_bash_result_directory_and_celltypes(backend):
    script = "mkdir -p RESULT/sub\necho 1 > RESULT/a\necho '[1, 2]' > RESULT/sub/b\necho text > RESULT/c\n"
    value = value_of(await run(backend, spec("bash", script, "mixed")), "mixed")
    assert value == {"a": 1, "sub/b": [1, 2], "c": "text\n"}
    outcome = await run(backend, spec("bash", script, "deepfolder"))
    deep = value_of(outcome, "plain")
    assert set(deep) == {"a", "sub/b", "c"}
    assert outcome.buffers[deep["a"]] == b"1\n"  # members are raw files, stored with the result
    npy = "python3 -c \"import numpy; numpy.save('RESULT', numpy.arange(3))\"; mv RESULT.npy RESULT"
    arr = value_of(await run(backend, spec("bash", npy, "mixed")), "mixed")
    assert list(arr) == [0, 1, 2]


async def test_bash_failures_keep_output(backend):
    outcome = await run(backend, spec("bash", "echo to-stdout; echo to-stderr >&2; exit 3", "bytes"))
    assert outcome.kind == "error"
    assert "Return code 3" in outcome.error
    assert "to-stdout" in outcome.error and "to-stderr" in outcome.error
    outcome = await run(backend, spec("bash", "true", "bytes"))
    assert "RESULT does not exist" in outcome.error
    outcome = await run(backend, spec("bash", "echo $undefined_variable > RESULT", "bytes"))
    assert "unbound variable" in outcome.error  # set -u
    outcome = await run(backend, spec("bash", "false; echo x > RESULT", "bytes"))
    assert "Return code 1" in outcome.error  # set -e


async def test_wall_time_limit_kills_the_whole_group(backend):
    outcome = await run(backend, spec("bash", "sleep 1000 & sleep 1000; wait", "bytes", wall_time=0.5))
    assert outcome.kind == "timeout"
    assert "wall time limit exceeded" in outcome.error and "0.5 s" in outcome.error
    await wait_for(lambda: not job_processes(), timeout=2)


async def test_memory_limit(backend):
    hog = "def f():\n    return len(bytearray(800 * 2**20))\n"
    outcome = await run(backend, spec("python", hog, "mixed", memory=400 * 2**20))
    assert outcome.kind == "memory"
    assert "memory limit exceeded" in outcome.error and str(400 * 2**20) in outcome.error
    assert (await run(backend, spec("python", hog, "mixed", memory=4 * 2**30))).ok


async def test_output_limit(backend):
    outcome = await run(backend, spec("bash", "yes > RESULT", "bytes", output=10**6))
    assert outcome.kind == "output"
    assert "output limit exceeded" in outcome.error
    outcome = await run(backend, spec("bash", "head -c 2000000 /dev/zero", "bytes", output=10**6))
    assert outcome.kind in ("output", "error")  # stdout is a file too: capped
    big = "def f():\n    return b'x' * 2000000\n"
    outcome = await run(backend, spec("python", big, "bytes", output=10**6))
    assert outcome.kind == "output" and "over the output limit" in outcome.error


async def test_escaped_processes_and_job_directories_are_removed(backend, tmp_path):
    script = "setsid sleep 1003 & (sleep 1003 &) ; echo ok > RESULT"
    await run(backend, spec("bash", "echo warm > RESULT", "bytes"))
    # the next job's directory is made ahead, by a process forked after the answer
    await wait_for(lambda: len(os.listdir(tmp_path / "jobs")) == 1, timeout=5)
    before = set(os.listdir(tmp_path / "jobs"))
    outcome = await run(backend, spec("bash", script, "bytes"))
    assert outcome.ok and outcome.buffers[outcome.result] == b"ok\n"
    await wait_for(lambda: not job_processes(), timeout=2)
    await wait_for(lambda: not before & set(os.listdir(tmp_path / "jobs")), timeout=2)  # removed


async def test_spec_wire_format_round_trip():
    job = JobSpec("cd" * 32, "bash", "x", "result", "bytes",
                  (PinInput("d", "mixed", b"{}", {"a/b": b"1"}, {"filesystem": {"mode": "directory"}}),),
                  Limits(1.0, 2, 3), {"k": 1})
    assert JobSpec.from_bytes(job.to_bytes()) == job
    outcome = JobOutcome(True, "ef" * 32, {"ef" * 32: b"data"}, stats={"wall_time_seconds": 1.0})
    assert JobOutcome.from_bytes(outcome.to_bytes()) == outcome
    with pytest.raises(ValueError):
        JobOutcome.from_bytes(outcome.to_bytes()[:-1])


async def test_directory_pin(backend):
    members = {"x.txt": b"1\n", "sub/y.txt": b"2\n"}
    deep = {path: hashlib.sha256(data).hexdigest() for path, data in members.items()}
    pin_in = PinInput("indir", "mixed", json.dumps(deep).encode(), members,
                      {"filesystem": {"optional": True, "mode": "directory"}, "celltype": "deepfolder"})
    outcome = await run(backend, spec("bash", "cat $indir/x.txt indir/sub/y.txt > RESULT", "bytes", pin_in))
    assert outcome.ok, outcome.error
    assert outcome.buffers[outcome.result] == b"1\n2\n"
