"""node.transformation: identity dict, checksum (against seamless-transformer's
tf_get_buffer) and validation."""

from __future__ import annotations

import hashlib

import pytest

from node import celltypes
from node.transformation import (
    TransformationError,
    parse_transformation,
    transformation_buffer,
    transformation_checksum,
)

tf_utils = pytest.importorskip("seamless_transformer.transformation_utils")


def cs(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CODE = "def add(a, b):\n    return a * 100 + b\n"
A, B, CODE_CS = cs(b"4\n"), cs(b"3\n"), cs(CODE.encode())

PYTHON_TF = {
    "__output__": ["result", "mixed", None],
    "__language__": "python",
    "__meta__": {"transformer_path": ["tf", "tf"], "local": False},
    "a": ["mixed", None, A],
    "b": ["mixed", None, B],
    "code": ["python", "transformer", CODE_CS],
    "__code_checksum__": CODE_CS,
}

BASH_TF = {
    "__language__": "bash",
    "__output__": ("result", "bytes", None),
    "__format__": {"data.txt": {"filesystem": {"optional": True, "mode": "file"}}},
    "__env__": cs(b"env"),
    "data.txt": ("bytes", None, cs(b"data")),
    "META__x": ("str", None, cs(b'"x"\n')),
    "code": ("text", None, cs(b"cat data.txt > RESULT\n")),
}


@pytest.mark.parametrize("tf", [PYTHON_TF, BASH_TF], ids=["python", "bash"])
def test_checksum_matches_seamless(tf):
    theirs = tf_utils.tf_get_buffer(dict(tf))
    assert transformation_buffer(tf) == theirs.content
    assert transformation_checksum(tf) == theirs.get_checksum().hex()


def test_dropped_keys_do_not_change_the_checksum():
    base = transformation_checksum(PYTHON_TF)
    for key in ("__meta__", "__env__", "__compilation__", "__record_probe__", "__code_text__",
                "__compilers__", "__languages__", "__compiled__", "__header__", "__deps__", "META__y"):
        assert transformation_checksum({**PYTHON_TF, key: {"anything": 1}}) == base
    # a kept key does change it
    assert transformation_checksum({**PYTHON_TF, "__as__": {"a": "x"}}) != base


def test_unknown_dunder_key_is_an_error():
    with pytest.raises(TransformationError, match="unknown transformation dunder key: __bogus__"):
        transformation_checksum({**PYTHON_TF, "__bogus__": 1})


def test_parse_python():
    tf = parse_transformation(PYTHON_TF)
    assert tf.checksum == transformation_checksum(PYTHON_TF)
    assert tf.language == "python"
    assert (tf.output_name, tf.output_celltype) == ("result", "mixed")
    assert [p.name for p in tf.pins] == ["a", "b"]
    assert tf.code_checksum == CODE_CS
    assert tf.meta["local"] is False


def test_parse_bash_with_dunder_beside():
    tf = parse_transformation(BASH_TF, {"__meta__": {"x": 1}})
    assert tf.language == "bash"
    assert [p.name for p in tf.pins] == ["META__x", "data.txt"]
    assert tf.formats["data.txt"]["filesystem"]["mode"] == "file"
    assert tf.meta == {"x": 1}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"a": ["mixed", None, "XYZ"]}, "checksum must be 64"),
        ({"a": ["mixed", None]}, "must be \\[celltype"),
        ({"a": ["nonsense", None, A]}, "unknown celltype"),
        ({"a": ["mixed", None, None]}, "no checksum"),
        ({"__output__": "result"}, "__output__"),
        ({"not valid": ["mixed", None, A]}, "invalid pin name"),
        ({"code": None}, "must be \\[celltype"),
    ],
)
def test_invalid_transformations(change, message):
    with pytest.raises(TransformationError, match=message):
        parse_transformation({**PYTHON_TF, **change})


def test_missing_code_and_bad_bash_names():
    tf = dict(PYTHON_TF)
    del tf["code"]
    with pytest.raises(TransformationError, match="no code pin"):
        parse_transformation(tf)
    for name in ("/etc/passwd", "../up", "a/../../b"):
        with pytest.raises(TransformationError, match="invalid pin name"):
            parse_transformation({**BASH_TF, name: ("bytes", None, A)})


def test_transformation_buffer_is_plain():
    assert transformation_buffer(PYTHON_TF) == celltypes.serialize(
        {k: v for k, v in PYTHON_TF.items() if k not in ("__meta__", "__code_checksum__")}, "plain"
    )
