"""Node identity: ids, key files, rotation with overlap."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.federation.canonical import CanonicalError, b64decode, b64encode, canonical_json, parse_duration
from node.federation.identity import (
    IdentityError,
    KeySet,
    NodeIdentity,
    is_node_id,
    load_identity,
    node_id_for,
    save_identity,
)
from tests.strategies import canonical_values

T0 = 1_800_000_000


def test_node_id_is_52_base32_chars_of_the_genesis_key():
    ident = NodeIdentity.generate(T0)
    assert is_node_id(ident.node_id)
    assert ident.node_id == node_id_for(ident.public_key)
    assert len({NodeIdentity.generate(T0).node_id for _ in range(5)}) == 5


def test_key_file_is_0600_and_round_trips(tmp_path):
    os.umask(0o022)
    ident = NodeIdentity.generate(T0)
    path = tmp_path / "site" / "node.key"
    save_identity(str(path), ident)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(str(path))
    assert loaded.node_id == ident.node_id and loaded.public_key == ident.public_key
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


def test_unsafe_or_missing_key_files_are_refused(tmp_path):
    path = tmp_path / "node.key"
    with pytest.raises(IdentityError, match="keygen"):
        load_identity(str(path))
    save_identity(str(path), NodeIdentity.generate(T0))
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(str(path))
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(IdentityError):
        load_identity(str(link))
    bad = tmp_path / "bad.key"
    bad.write_text("{}")
    bad.chmod(0o600)
    with pytest.raises(IdentityError, match="not a seamless-node key file"):
        load_identity(str(bad))


def test_key_file_with_a_foreign_private_key_is_refused():
    a, b = NodeIdentity.generate(T0), NodeIdentity.generate(T0)
    doc = json.loads(a.to_file_bytes())
    doc["private_key"] = json.loads(b.to_file_bytes())["private_key"]
    with pytest.raises(IdentityError, match="not the newest key"):
        NodeIdentity.from_file_bytes(json.dumps(doc).encode())


def test_rotation_keeps_the_id_and_overlaps():
    old = NodeIdentity.generate(T0)
    new = old.rotate(T0 + 100, overlap=3600)
    assert new.node_id == old.node_id and new.public_key != old.public_key
    ks = KeySet.from_document(new.keyset.to_document(), node_id=old.node_id)
    old_period, new_period = ks.find(old.public_key), ks.find(new.public_key)
    assert old_period.valid_at(T0 + 3700) and not old_period.valid_at(T0 + 3701)
    assert new_period.valid_at(T0 + 100) and new_period.valid_at(T0 + 10**8)
    assert not new_period.valid_at(T0 + 99)
    assert ks.extends(old.keyset) and not old.keyset.extends(ks)
    third = new.rotate(T0 + 200, overlap=0)
    assert KeySet.from_document(third.keyset.to_document()).extends(ks)


def test_tampered_key_sets_are_refused():
    ident = NodeIdentity.generate(T0).rotate(T0 + 10, overlap=60)
    doc = ident.keyset.to_document()
    other = NodeIdentity.generate(T0)
    cases = []
    d = json.loads(json.dumps(doc))
    d["rotations"][0]["previous_until"] += 1000  # stretch the old key's life
    cases.append((d, "not signed by the previous key"))
    d = json.loads(json.dumps(doc))
    d["rotations"][0]["key"] = b64encode(other.public_key)  # slip in another key
    cases.append((d, "not signed"))
    d = json.loads(json.dumps(doc))
    d["genesis"] = b64encode(other.public_key)
    cases.append((d, "does not belong"))
    d = json.loads(json.dumps(doc))
    d["rotations"][0]["previous_until"] = d["rotations"][0]["at"] - 1
    cases.append((d, "inconsistent times"))
    cases.append(({"node_id": ident.node_id}, "malformed"))
    for bad, message in cases:
        with pytest.raises(IdentityError, match=message):
            KeySet.from_document(bad)
    with pytest.raises(IdentityError, match="expected"):
        KeySet.from_document(doc, node_id=other.node_id)


def test_a_fork_does_not_replace_a_known_chain():
    base = NodeIdentity.generate(T0)
    one, fork = base.rotate(T0 + 1, 10), base.rotate(T0 + 2, 10)
    assert not fork.keyset.extends(one.keyset)
    assert one.keyset.extends(base.keyset) and fork.keyset.extends(base.keyset)


@given(canonical_values)
@settings(max_examples=200)
def test_canonical_json_is_stable(value):
    assert canonical_json(json.loads(canonical_json(value))) == canonical_json(value)


def test_canonical_json_refuses_floats():
    with pytest.raises(CanonicalError):
        canonical_json({"a": 1.5})


@given(st.binary(max_size=80))
def test_base64_round_trip_and_single_spelling(data):
    text = b64encode(data)
    assert b64decode(text) == data
    for bad in (text + "=", text + " ", text.replace("-", "+") if "-" in text else text + "+"):
        with pytest.raises(ValueError):
            b64decode(bad)


def test_parse_duration():
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("3600") == 3600
    with pytest.raises(ValueError):
        parse_duration("soon")
