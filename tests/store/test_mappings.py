"""MappingStore and request parsing, without HTTP."""

from __future__ import annotations

import os
import sqlite3

import pytest

from node.store.mapping_requests import (
    DatabaseReadOnly,
    MalformedRequest,
    parse_query,
    parse_update,
)
from node.store.mapping_schema import SchemaError
from node.store.mappings import MappingStore
from tests.helpers import checksum_of

TF, TF2, R, R2, R3 = (checksum_of(x) for x in (b"tf", b"tf2", b"r", b"r2", b"r3"))


def record(tf: str, result: str, **extra: object) -> dict:
    return {"schema_version": 1, "tf_checksum": tf, "result_checksum": result, **extra}


@pytest.fixture
def store(tmp_path):
    s = MappingStore(str(tmp_path / "seamless.db"), readers=2)
    s.open()
    yield s
    s.close()


def write(store: MappingStore, *requests: dict):
    return store.write_batch([parse_update(r) for r in requests])


def read(store: MappingStore, request: dict):
    return store.read(parse_query(request))


# ------------------------------------------------------------------------ request parsing

BAD_CHECKSUMS = [
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 64 + "\n",
    " " + "a" * 63,
    "٣" * 64,  # Unicode digits
    "../" + "a" * 61,
    "g" * 64,
    64,
    None,
    ["a" * 64],
]


@pytest.mark.parametrize("bad", BAD_CHECKSUMS)
def test_bad_checksums_are_refused(bad):
    with pytest.raises(MalformedRequest, match="checksum"):
        parse_query({"type": "transformation", "checksum": bad})
    with pytest.raises(MalformedRequest, match="checksum"):
        parse_update({"type": "transformation", "checksum": TF, "value": bad})


@pytest.mark.parametrize(
    "request_, message",
    [
        ([1, 2], "expected a JSON object"),
        ("transformation", "expected a JSON object"),
        ({}, "missing field 'type'"),
        ({"type": "nope", "checksum": TF}, "Unknown request type 'nope'"),
        ({"type": ["transformation"], "checksum": TF}, "Unknown request type"),
        ({"type": "transformation"}, "missing field 'checksum'"),
        ({"type": "expression", "checksum": TF, "celltype": "plain", "target_celltype": "plain"}, "'path'"),
        (
            {
                "type": "expression",
                "checksum": TF,
                "path": [1.5],
                "celltype": "plain",
                "target_celltype": "plain",
            },
            "'path'",
        ),
        ({"type": "syntactic_to_semantic", "checksum": TF, "celltype": 3, "subcelltype": None}, "'celltype'"),
        ({"type": "bucket_probe", "bucket_kind": "node"}, "'label'"),
        ({"type": "irreproducible", "checksum": TF, "result": "x"}, "'result'"),
    ],
)
def test_malformed_reads(request_, message):
    with pytest.raises(MalformedRequest, match=message):
        parse_query(request_)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"type": "rev_transformations", "checksum": TF}, "Unknown request type"),
        ({"type": "protocol"}, "Unknown request type"),
        ({"type": "transformation", "checksum": TF}, "missing field 'value'"),
        ({"type": "metadata", "checksum": TF, "result": R, "value": [1]}, "JSON object"),
        ({"type": "metadata", "checksum": TF, "result": R, "value": "{not json"}, "JSON object"),
        ({"type": "metadata", "checksum": TF, "result": R, "value": record(TF2, R)}, "tf_checksum"),
        ({"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R2)}, "result_checksum"),
        (
            {
                "type": "metadata",
                "checksum": TF,
                "result": R,
                "value": {**record(TF, R), "schema_version": "1"},
            },
            "schema_version",
        ),
        (
            {
                "type": "metadata",
                "checksum": TF,
                "result": R,
                "value": {**record(TF, R), "schema_version": True},
            },
            "schema_version",
        ),
        (
            {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R, checksum_fields=[""])},
            "checksum_fields",
        ),
        ({"type": "buffer_info", "checksum": TF, "value": {"length": -1}}, "'length'"),
        ({"type": "buffer_info", "checksum": TF, "value": {"length": True}}, "'length'"),
        ({"type": "buffer_info", "checksum": TF, "value": {"is_json": "yes"}}, "'is_json'"),
        ({"type": "buffer_info", "checksum": TF, "value": {"str2text": "abc"}}, "'str2text'"),
        ({"type": "buffer_info", "checksum": TF, "value": {"shape": [2, -1]}}, "'shape'"),
        ({"type": "buffer_info", "checksum": TF, "value": "length"}, "'value'"),
        (
            {
                "type": "semantic_to_syntactic",
                "checksum": TF,
                "celltype": "python",
                "subcelltype": "x",
                "value": ["A" * 64],
            },
            "list of checksums",
        ),
        (
            {"type": "semantic_to_syntactic", "checksum": TF, "celltype": "python", "value": [R]},
            "'subcelltype'",
        ),
        (
            {
                "type": "expression",
                "checksum": TF,
                "path": ["a"],
                "celltype": "text",
                "target_celltype": "plain",
                "value": R,
            },
            "celltype mixed",
        ),
        (
            {
                "type": "expression",
                "checksum": TF,
                "path": ["a" * 200],
                "celltype": "plain",
                "target_celltype": "plain",
                "value": R,
            },
            "longer than 100",
        ),
        (
            {
                "type": "expression",
                "checksum": TF,
                "path": [],
                "celltype": "x" * 21,
                "target_celltype": "plain",
                "value": R,
            },
            "longer than 20",
        ),
        (
            {
                "type": "bucket_probe",
                "bucket_kind": "galaxy",
                "label": "x",
                "bucket_checksum": R,
                "freshness_tokens": {},
                "captured_at": "now",
            },
            "bucket_kind",
        ),
        (
            {
                "type": "bucket_probe",
                "bucket_kind": "node",
                "label": "",
                "bucket_checksum": R,
                "freshness_tokens": {},
                "captured_at": "now",
            },
            "'label'",
        ),
        (
            {
                "type": "bucket_probe",
                "bucket_kind": "node",
                "label": "x",
                "bucket_checksum": R,
                "freshness_tokens": [],
                "captured_at": "now",
            },
            "freshness_tokens",
        ),
    ],
)
def test_malformed_writes(request_, message):
    with pytest.raises(MalformedRequest, match=message):
        parse_update(request_)


# --------------------------------------------------------------------------- round trips


def test_every_type_round_trips(store):
    path_rq = {"checksum": TF, "path": ["a", 0], "celltype": "mixed", "target_celltype": "plain"}
    probe = {
        "bucket_kind": "node",
        "label": "host1",
        "bucket_checksum": R,
        "freshness_tokens": {"a": 1},
        "captured_at": "2026-01-01T00:00:00Z",
    }
    outcomes = write(
        store,
        {"type": "transformation", "checksum": TF, "value": R},
        {"type": "compilation", "checksum": TF2, "value": R2},
        {"type": "buffer_info", "checksum": R, "value": {"length": 3, "is_utf8": True, "members": 2}},
        {
            "type": "semantic_to_syntactic",
            "checksum": R2,
            "celltype": "python",
            "subcelltype": "transformer",
            "value": [R3, R],
        },
        {"type": "expression", **path_rq, "value": R3},
        {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R, extra={"x": [1, 2.5]})},
        {"type": "bucket_probe", **probe},
    )
    assert [o.status for o in outcomes] == [200] * 7
    assert read(store, {"type": "protocol"}) == ["seamless", "database", "2.2"]
    assert read(store, {"type": "transformation", "checksum": TF}) == R
    assert read(store, {"type": "rev_transformations", "checksum": R}) == [TF]
    assert read(store, {"type": "compilation", "checksum": TF2}) == R2
    assert read(store, {"type": "buffer_info", "checksum": R}) == {"length": 3, "is_utf8": True, "members": 2}
    sts = {"celltype": "python", "subcelltype": "transformer"}
    assert read(store, {"type": "semantic_to_syntactic", "checksum": R2, **sts}) == [R3, R]
    assert read(store, {"type": "syntactic_to_semantic", "checksum": R3, **sts}) == [R2]
    assert read(store, {"type": "expression", **path_rq}) == R3
    assert read(store, {"type": "rev_expression", "checksum": R3}) == [{**path_rq, "result": R3}]
    assert read(store, {"type": "metadata", "checksum": TF}) == record(TF, R, extra={"x": [1, 2.5]})
    assert read(store, {"type": "bucket_probe", "bucket_kind": "node", "label": "host1"}) == probe


def test_missing_keys_read_as_none(store):
    for rq in (
        {"type": "transformation", "checksum": TF},
        {"type": "rev_transformations", "checksum": R},
        {"type": "metadata", "checksum": TF},
        {"type": "buffer_info", "checksum": TF},
        {"type": "irreproducible", "checksum": TF},
        {"type": "syntactic_to_semantic", "checksum": TF, "celltype": "python", "subcelltype": None},
        {"type": "bucket_probe", "bucket_kind": "node", "label": "x"},
    ):
        assert read(store, rq) is None, rq


def test_transformation_overwrite_keeps_reverse_mapping_exact(store):
    for _ in range(3):
        write(store, {"type": "transformation", "checksum": TF, "value": R})
    assert read(store, {"type": "rev_transformations", "checksum": R}) == [TF]
    write(store, {"type": "transformation", "checksum": TF, "value": R2})
    assert read(store, {"type": "transformation", "checksum": TF}) == R2
    assert read(store, {"type": "rev_transformations", "checksum": R}) is None
    assert read(store, {"type": "rev_transformations", "checksum": R2}) == [TF]


def test_metadata_is_write_once(store):
    rq = {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R, a=1)}
    assert write(store, rq)[0].ok
    assert write(store, rq)[0].ok  # identical rewrite
    other = write(store, {**rq, "value": record(TF, R, a=2)})[0]
    assert (other.status, other.message) == (409, "Execution record already exists with different metadata")
    mismatch = write(store, {**rq, "result": R2, "value": record(TF, R2)})[0]
    assert mismatch.status == 409 and "does not match" in mismatch.message
    assert read(store, {"type": "metadata", "checksum": TF}) == record(TF, R, a=1)
    assert read(store, {"type": "transformation", "checksum": TF}) == R


def test_irreproducible_moves_entry_out_of_the_cache(store):
    write(store, {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R)})
    wrong = write(store, {"type": "irreproducible", "checksum": TF, "result": R2})[0]
    assert (wrong.status, wrong.message) == (404, "Transformation does not have the irreproducible result")
    assert write(store, {"type": "irreproducible", "checksum": TF, "result": R})[0].ok
    assert write(store, {"type": "irreproducible", "checksum": TF, "result": R})[0].ok  # no duplicate row
    assert read(store, {"type": "transformation", "checksum": TF}) is None
    assert read(store, {"type": "metadata", "checksum": TF}) is None
    assert read(store, {"type": "rev_transformations", "checksum": R}) is None
    assert read(store, {"type": "irreproducible", "checksum": TF}) == [
        {"checksum": TF, "result": R, "metadata": record(TF, R)}
    ]
    assert read(store, {"type": "irreproducible", "checksum": TF, "result": R2}) is None
    again = write(store, {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R)})[0]
    assert (again.status, again.message) == (409, "Transformation already has irreproducible records")


def test_buffer_info_merges(store):
    write(store, {"type": "buffer_info", "checksum": R, "value": {"length": 3, "is_json": None}})
    write(store, {"type": "buffer_info", "checksum": R, "value": {"is_json": True, "json_type": "int"}})
    assert read(store, {"type": "buffer_info", "checksum": R}) == {
        "length": 3,
        "is_json": True,
        "json_type": "int",
    }


def test_a_refused_write_does_not_undo_its_batch(store):
    outcomes = write(
        store,
        {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R, a=1)},
        {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R, a=2)},
        {"type": "transformation", "checksum": TF2, "value": R2},
    )
    assert [o.status for o in outcomes] == [200, 409, 200]
    assert read(store, {"type": "transformation", "checksum": TF2}) == R2


# ------------------------------------------------------------------- files and read-only


def test_extra_files_are_consulted_after_the_own_file(tmp_path):
    shared = MappingStore(str(tmp_path / "shared.db"))
    shared.open()
    write(
        shared,
        {"type": "transformation", "checksum": TF, "value": R},
        {"type": "transformation", "checksum": TF2, "value": R},
    )
    write(shared, {"type": "transformation", "checksum": checksum_of(b"x"), "value": R3})
    shared.close()
    own = MappingStore(str(tmp_path / "own.db"), extra_files=[str(tmp_path / "shared.db")])
    own.open()
    try:
        write(own, {"type": "transformation", "checksum": TF2, "value": R2})
        assert read(own, {"type": "transformation", "checksum": TF}) == R  # from the extra file
        assert read(own, {"type": "transformation", "checksum": TF2}) == R2  # own file first
        assert read(own, {"type": "rev_transformations", "checksum": R}) == [TF, TF2]  # union
        # marking the shared result irreproducible here hides it
        x = checksum_of(b"x")
        write(own, {"type": "transformation", "checksum": x, "value": R3})
        write(own, {"type": "irreproducible", "checksum": x, "result": R3})
        assert read(own, {"type": "transformation", "checksum": x}) is None
    finally:
        own.close()


def test_readonly_store_refuses_writes(tmp_path):
    path = str(tmp_path / "seamless.db")
    s = MappingStore(path)
    s.open()
    write(s, {"type": "transformation", "checksum": TF, "value": R})
    s.close()
    ro = MappingStore(path, readonly=True)
    ro.open()
    try:
        assert read(ro, {"type": "transformation", "checksum": TF}) == R
        with pytest.raises(DatabaseReadOnly):
            write(ro, {"type": "transformation", "checksum": TF2, "value": R})
    finally:
        ro.close()


def test_file_without_write_permission_opens_readonly(tmp_path):
    path = str(tmp_path / "seamless.db")
    s = MappingStore(path)
    s.open()
    write(s, {"type": "transformation", "checksum": TF, "value": R})
    s.close()
    os.chmod(path, 0o444)
    ro = MappingStore(path)
    ro.open()
    try:
        assert ro.readonly and ro.readonly_reason == "the file is not writable"
        assert read(ro, {"type": "transformation", "checksum": TF}) == R
    finally:
        ro.close()


def test_readonly_file_in_wal_mode_in_readonly_directory(tmp_path):
    """A WAL file left by a crash, in a directory nobody may write: served via immutable."""
    directory = tmp_path / "ro"
    directory.mkdir()
    path = str(directory / "seamless.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        'CREATE TABLE "transformation" ("checksum" CHAR(64) NOT NULL PRIMARY KEY, "result" CHAR(64) NOT NULL)'
    )
    conn.execute("INSERT INTO transformation VALUES (?, ?)", (TF, R))
    conn.commit()
    conn.close()
    os.chmod(path, 0o444)
    os.chmod(directory, 0o555)
    try:
        ro = MappingStore(path)
        ro.open()
        try:
            assert ro.readonly
            assert read(ro, {"type": "transformation", "checksum": TF}) == R
            assert read(ro, {"type": "metadata", "checksum": TF}) is None  # table absent
        finally:
            ro.close()
    finally:
        os.chmod(directory, 0o755)


def test_missing_files(tmp_path):
    ro = MappingStore(str(tmp_path / "nope.db"), readonly=True)
    ro.open()  # a read-only node without a database file serves an empty one
    try:
        assert read(ro, {"type": "transformation", "checksum": TF}) is None
        assert not (tmp_path / "nope.db").exists()
    finally:
        ro.close()
    with pytest.raises(SchemaError, match="does not exist"):
        MappingStore(str(tmp_path / "own.db"), extra_files=[str(tmp_path / "nope.db")]).open()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "seamless.db"
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(SchemaError, match="cannot open database file"):
        MappingStore(str(path)).open()
    with pytest.raises(SchemaError, match="cannot open database file"):
        MappingStore(str(path), readonly=True).open()


def test_foreign_schema_is_refused(tmp_path):
    path = str(tmp_path / "other.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE transformation (id INTEGER, something TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="'transformation' has columns"):
        MappingStore(path).open()


def test_clean_close_leaves_a_single_rollback_journal_file(tmp_path):
    path = str(tmp_path / "seamless.db")
    s = MappingStore(path)
    s.open()
    assert s._writer is not None
    assert s._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    write(s, {"type": "transformation", "checksum": TF, "value": R})
    s.close()
    assert sorted(os.listdir(tmp_path)) == ["seamless.db"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
