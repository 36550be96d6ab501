"""What a backend runs and what it gives back, as values, and their wire format.

A ``JobSpec`` holds everything a job needs (code text, input buffers, limits), so that
any process on any machine can run it without reaching the node's store: the local
worker pool, a Dask worker, a Slurm compute node. A ``JobOutcome`` is what comes back:
the result buffers (the result plus, for deep results, its members) or an error text
with its kind.

Both travel as ``pack``ed bytes: a JSON header plus raw blobs, never pickle, so that
bytes coming back from a process where job code ran are only ever parsed as data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

#: failure kinds, as reported to clients
ERROR = "error"  # the job's code failed (or its inputs could not be used)
TIMEOUT = "timeout"  # over the wall-time limit
MEMORY = "memory"  # over the memory limit
OUTPUT = "output"  # over the output-size limit
KILLED = "killed"  # cancelled (or killed from outside)
INTERNAL = "internal"  # the backend itself failed

_HEAD = struct.Struct("<I")


def pack(header: dict[str, Any], blobs: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """``uint32 len(H) H blob...`` where H is JSON with the blob sizes under ``_blobs``."""
    head = json.dumps({**header, "_blobs": [len(b) for b in blobs]}).encode()
    return b"".join([_HEAD.pack(len(head)), head, *blobs])


def unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if len(data) < _HEAD.size:
        raise ValueError("truncated message")
    (size,) = _HEAD.unpack_from(data)
    header = json.loads(data[_HEAD.size : _HEAD.size + size])
    if not isinstance(header, dict):
        raise ValueError("malformed message header")
    pos = _HEAD.size + size
    blobs = []
    for length in header.pop("_blobs", []):
        if not isinstance(length, int) or length < 0 or pos + length > len(data):
            raise ValueError("malformed message: blob sizes do not match")
        blobs.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise ValueError("malformed message: trailing bytes")
    return header, blobs


@dataclass(frozen=True)
class Limits:
    wall_time: float = 86400.0  # seconds
    memory: int = 0  # bytes of address space; 0 = no limit
    output: int = 1 << 30  # bytes per file written and per result buffer


@dataclass(frozen=True)
class PinInput:
    name: str
    celltype: str
    data: bytes
    #: for a directory (deep folder) pin: relative path -> file bytes
    members: dict[str, bytes] | None = None
    #: the __format__ entry of the pin, if any
    format: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobSpec:
    checksum: str
    language: str
    code: str
    output_name: str
    output_celltype: str
    pins: tuple[PinInput, ...] = ()
    limits: Limits = field(default_factory=Limits)
    meta: dict[str, Any] = field(default_factory=dict)
    #: whether the job may reach the network (jobless.network and the job's powers)
    network: bool = False
    #: how a runner sandboxes the job (SandboxSettings as a dict); None: not at all
    sandbox: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        blobs: list[bytes] = []
        pins = []
        for pin in self.pins:
            entry: dict[str, Any] = {"name": pin.name, "celltype": pin.celltype, "format": pin.format}
            entry["data"] = len(blobs)
            blobs.append(pin.data)
            if pin.members is not None:
                entry["members"] = {}
                for path, data in pin.members.items():
                    entry["members"][path] = len(blobs)
                    blobs.append(data)
            pins.append(entry)
        header = {
            "checksum": self.checksum,
            "language": self.language,
            "code": self.code,
            "output_name": self.output_name,
            "output_celltype": self.output_celltype,
            "limits": asdict(self.limits),
            "meta": self.meta,
            "pins": pins,
            "network": self.network,
            "sandbox": self.sandbox,
        }
        return pack(header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> "JobSpec":
        header, blobs = unpack(data)
        pins = []
        for entry in header["pins"]:
            members = entry.get("members")
            pins.append(
                PinInput(
                    entry["name"],
                    entry["celltype"],
                    blobs[entry["data"]],
                    {p: blobs[i] for p, i in members.items()} if members is not None else None,
                    entry.get("format"),
                )
            )
        return cls(
            checksum=header["checksum"],
            language=header["language"],
            code=header["code"],
            output_name=header["output_name"],
            output_celltype=header["output_celltype"],
            pins=tuple(pins),
            limits=Limits(**header["limits"]),
            meta=header.get("meta") or {},
            network=bool(header.get("network", False)),
            sandbox=header.get("sandbox"),
        )


@dataclass(frozen=True)
class JobOutcome:
    """The end of a run: ``result`` names the result buffer when ``ok``."""

    ok: bool
    result: str | None = None
    #: checksum -> bytes: the result buffer and, for deep results, every member
    buffers: dict[str, bytes] = field(default_factory=dict)
    error: str = ""
    kind: str = ""
    #: wall_time_seconds, cpu_user_seconds, cpu_system_seconds, memory_peak_bytes
    stats: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        names = list(self.buffers)
        header = {
            "ok": self.ok, "result": self.result, "names": names, "error": self.error,
            "kind": self.kind, "stats": self.stats,
        }
        return pack(header, [self.buffers[n] for n in names])

    @classmethod
    def from_bytes(cls, data: bytes) -> "JobOutcome":
        header, blobs = unpack(data)
        names = header["names"]
        if len(names) != len(blobs):
            raise ValueError("malformed outcome: names and buffers differ in number")
        return cls(
            ok=bool(header["ok"]),
            result=header.get("result"),
            buffers=dict(zip(names, blobs, strict=True)),
            error=str(header.get("error", "")),
            kind=str(header.get("kind", "")),
            stats=dict(header.get("stats") or {}),
        )

    @classmethod
    def failure(cls, kind: str, error: str, stats: dict[str, float] | None = None) -> "JobOutcome":
        return cls(ok=False, error=error, kind=kind, stats=stats or {})


__all__ = [
    "ERROR", "INTERNAL", "KILLED", "MEMORY", "OUTPUT", "TIMEOUT",
    "JobOutcome", "JobSpec", "Limits", "PinInput", "pack", "unpack",
]
