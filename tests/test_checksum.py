import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.checksum import EMPTY_CHECKSUM, buffer_checksum, is_checksum, parse_checksum, parse_checksum_list
from node.errors import InvalidChecksum
from tests.strategies import checksums, near_checksums


@given(checksums)
def test_valid_checksums_accepted(cs):
    assert is_checksum(cs)
    assert parse_checksum(cs) == cs


@given(near_checksums)
def test_near_checksums_rejected(value):
    assert not is_checksum(value)
    with pytest.raises(InvalidChecksum):
        parse_checksum(value)


@pytest.mark.parametrize("value", [None, 42, b"0" * 64, ["0" * 64], "../" + "0" * 61, "%2e%2e%2f"])
def test_non_strings_and_paths_rejected(value):
    assert not is_checksum(value)


def test_unicode_digits_rejected_even_though_int_accepts_them():
    value = "\u0663" * 64  # int(value, 16) would accept this
    assert int(value, 16) >= 0
    assert not is_checksum(value)


def test_known_value_plain_42():
    # Seamless: plain 42 -> b"42\n" -> this checksum
    assert buffer_checksum(b"42\n") == "084c799cd551dd1d8d5c5f9a5d593b2e931f5e36122ee5c793c1d08a19839cc0"
    assert EMPTY_CHECKSUM == hashlib.sha256(b"").hexdigest()


@given(st.binary(max_size=1000))
def test_buffer_checksum_is_sha256(data):
    assert buffer_checksum(data) == hashlib.sha256(data).hexdigest()


def test_checksum_list():
    cs = "0" * 64
    assert parse_checksum_list([cs, cs]) == [cs, cs]
    with pytest.raises(InvalidChecksum):
        parse_checksum_list({"a": cs})
    with pytest.raises(InvalidChecksum):
        parse_checksum_list([cs, "x"])
    with pytest.raises(InvalidChecksum, match="too many"):
        parse_checksum_list([cs] * 3, max_items=2)
