"""node.inline_values: values sent inline with a transformation, verified against the
checksums it names (pure; byte-exact with seamless-core's own buffers)."""

from __future__ import annotations

import hashlib

import pytest

from node import celltypes
from node.inline_values import InlineMismatch, parse_verified, verify_inline
from node.transformation import TransformationError, transformation_checksum

CODE = "def f(a):\n    return a + 1\n"


def cs(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CODE_CS = cs(celltypes.serialize(CODE, "python"))
A = cs(b"1\n")
TF = {
    "__language__": "python",
    "__output__": ["result", "mixed", None],
    "a": ["mixed", None, A],
    "code": ["python", "transformer", CODE_CS],
}


def test_code_text_hashes_as_seamless_hashes_it():
    seamless = pytest.importorskip("seamless")
    assert seamless.Buffer(CODE, "python").get_checksum().hex() == CODE_CS


@pytest.mark.parametrize("text", [CODE, CODE.rstrip("\n"), CODE + "\n\n"])
def test_honest_code_text_is_verified_and_returned(text):
    tf = parse_verified({**TF, "__code_text__": text}, {"__code_checksum__": CODE_CS})
    assert tf.inline == {CODE_CS: CODE.encode()}
    assert tf.checksum == transformation_checksum(TF)  # inline keys change nothing


def test_without_inline_values_nothing_is_inline():
    assert parse_verified(TF).inline == {}
    assert parse_verified({**TF, "__code_text__": None}).inline == {}


def test_other_code_is_refused_naming_both_checksums():
    other = "def f(a):\n    return 666\n"
    with pytest.raises(InlineMismatch) as info:
        parse_verified(TF, {"__code_text__": other})
    message = str(info.value)
    assert "__code_text__ in tf_dunder" in message
    assert CODE_CS in message and cs(celltypes.serialize(other, "python")) in message
    assert isinstance(info.value, TransformationError) and info.value.http_status == 400


def test_every_source_is_checked_not_only_the_one_that_wins():
    with pytest.raises(InlineMismatch, match="tf_dunder"):
        parse_verified({**TF, "__code_text__": CODE}, {"__code_text__": "lambda: 666"})


@pytest.mark.parametrize("named", ["0" * 64, "not a checksum", 42])
def test_code_checksum_must_be_the_code_pins(named):
    with pytest.raises(InlineMismatch, match="__code_checksum__"):
        parse_verified({**TF, "__code_checksum__": named})


def test_code_text_must_be_text():
    with pytest.raises(InlineMismatch, match="must be a string"):
        parse_verified({**TF, "__code_text__": ["def f(): pass"]})


def test_bash_code_is_hashed_as_text():
    script = "echo hi > RESULT"
    script_cs = cs(celltypes.serialize(script, "text"))
    tf = {"__language__": "bash", "__output__": ["result", "bytes", None], "code": ["text", None, script_cs]}
    assert parse_verified(tf, {"__code_text__": script + "\n"}).inline == {script_cs: b"echo hi > RESULT\n"}


def test_verify_inline_alone():
    sources = [("here", {"__code_text__": CODE})]
    assert verify_inline(sources, code_checksum=CODE_CS, code_celltype="python") == {CODE_CS: CODE.encode()}
    with pytest.raises(InlineMismatch, match="celltype"):
        verify_inline(sources, code_checksum=CODE_CS, code_celltype="no-such-celltype")
