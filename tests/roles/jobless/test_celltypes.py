"""node.celltypes and node.mixed against Seamless 1.x's own serialization (seamless-core
0.1.4, imported here as the reference): the same value gives the same bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import celltypes
from node.celltypes import CelltypeError

reference = pytest.importorskip("seamless.checksum.serialize")
Buffer = pytest.importorskip("seamless").Buffer


def upstream(value, celltype):
    return reference.serialize_sync(value, celltype, use_cache=False)


PLAIN_42 = "084c799cd551dd1d8d5c5f9a5d593b2e931f5e36122ee5c793c1d08a19839cc0"

CASES = [
    (42, "plain"),
    ("é", "plain"),
    ("é", "mixed"),
    (1e16, "plain"),
    (1e16, "mixed"),
    (0.1, "plain"),
    ({"b": [1, 2.5, None, True], "a": {"é": "x"}}, "plain"),
    ({"b": [1, 2.5, None, True], "a": {"é": "x"}}, "mixed"),
    ([], "mixed"),
    ({}, "plain"),
    ((1, 2), "plain"),
    ("hello", "str"),
    (42, "str"),
    (True, "str"),
    ("42", "int"),
    (3, "float"),
    (2.5, "float"),
    (0, "bool"),
    ("some text\n\n\n", "text"),
    ("def f(a):\n    return a\n", "python"),
    ("a: 1", "yaml"),
    (b"\x00\x01raw", "bytes"),
    ("text", "bytes"),
    (b"\x00\x01raw", "binary"),
    (np.arange(12, dtype="int32").reshape(3, 4), "binary"),
    (np.arange(12, dtype="int32").reshape(3, 4), "mixed"),
    (np.arange(12, dtype="float64").reshape(3, 4).T, "mixed"),
    (np.array([True, False]), "mixed"),
    (np.array([b"ab", b"c"]), "mixed"),
    (np.float32(1.5), "mixed"),
    (np.int64(7), "mixed"),
    ([1, 2, 3], "binary"),
    ({"a": np.arange(3), "b": [1, "x", np.zeros((2, 2), dtype="f4")], "c": b"hi"}, "mixed"),
    ([np.arange(2), np.arange(2)], "mixed"),
    ([np.arange(2), np.arange(3, dtype="u2"), "z"], "mixed"),
    ({"z": {"y": np.ones(4, dtype="i1")}, "a": (1, 2)}, "mixed"),
    (PLAIN_42, "checksum"),
    ({"x": PLAIN_42}, "deepcell"),
]


@pytest.mark.parametrize("value, celltype", CASES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(CASES)])
def test_same_bytes_as_seamless(value, celltype):
    ours = celltypes.serialize(value, celltype)
    assert ours == upstream(value, "plain" if celltype == "deepcell" else celltype)


def test_known_values():
    assert celltypes.serialize(42, "plain") == b"42\n"
    assert hashlib.sha256(celltypes.serialize(42, "plain")).hexdigest() == PLAIN_42
    assert celltypes.serialize("é", "plain") == b'"\xc3\xa9"\n'
    assert celltypes.serialize("é", "mixed") == b'"\\u00e9"\n'
    assert celltypes.serialize("hello", "str") == b'"hello"\n'


@pytest.mark.parametrize("value, celltype", CASES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(CASES)])
def test_round_trip(value, celltype):
    buffer = celltypes.serialize(value, celltype)
    ours = celltypes.deserialize(buffer, celltype)
    if celltype == "checksum":  # upstream cannot read back its own checksum buffers
        assert ours == value
        return
    theirs = Buffer(buffer).get_value("plain" if celltype == "deepcell" else celltype)
    if celltype == "bytes":
        theirs = bytes(theirs.content)
    assert _same(ours, theirs), (ours, theirs)
    # and the value serializes back to the same buffer
    if celltype not in ("bytes", "text", "python", "yaml", "str", "binary"):
        assert celltypes.serialize(ours, celltype) == buffer


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        both = isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        return both and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        same_length = isinstance(b, list) and len(a) == len(b)
        return same_length and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


scalars = st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.floats(allow_nan=False)
json_values = st.recursive(
    scalars | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_json_values_match_seamless(value):
    for celltype in ("plain", "mixed"):
        assert celltypes.serialize(value, celltype) == upstream(value, celltype)


@pytest.mark.parametrize(
    "value, celltype",
    [({1j}, "plain"), ("x", "nonsense"), (object(), "mixed"), ("x", "int")],
)
def test_errors_are_clear(value, celltype):
    with pytest.raises(CelltypeError):
        celltypes.serialize(value, celltype)


@pytest.mark.parametrize(
    "buffer, celltype",
    [(b"not json\n", "plain"), (b"\xff\xfe", "text"), (b"def (:\n", "python"), (b'"x"\n', "int"),
     (b"\x94SEAMLESS-MIXED\x05junk", "mixed"), (b"[1]\n", "binary")],
)
def test_bad_buffers_are_refused(buffer, celltype):
    with pytest.raises(CelltypeError):
        celltypes.deserialize(buffer, celltype)
