"""Signed requests: every reason for a 401, as pure verdicts."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.federation.canonical import b64encode
from node.federation.identity import NodeIdentity
from node.federation.signing import (
    H_BODY,
    H_KEY,
    H_NONCE,
    H_ON_BEHALF,
    H_ORIGIN,
    H_SIGNATURE,
    H_TIMESTAMP,
    REQUIRED,
    Reason,
    sign_request,
    verify_request,
)
from tests.strategies import http_methods, request_targets

T0 = 1_800_000_000
A = NodeIdentity.generate(T0 - 1000)
B = NodeIdentity.generate(T0 - 1000)
BODY = b'["' + b"0" * 64 + b'"]'


def signed(ident=A, method="POST", target="/federation/buffers/has", body=BODY, dest=None, t=T0, **kw):
    return sign_request(
        ident, method=method, target=target, body=body, destination=dest or B.node_id, timestamp=t, **kw
    )


def check(headers, method="POST", target="/federation/buffers/has", body=BODY, now=T0, keysets=None, **kw):
    return verify_request(
        method=method,
        target=target,
        headers=headers,
        body_sha256=hashlib.sha256(body).hexdigest() if body is not None else None,
        self_id=B.node_id,
        keysets={A.node_id: A.keyset} if keysets is None else keysets,
        now=now,
        **kw,
    )


def test_a_good_request_verifies():
    verdict = check(signed())
    assert verdict.ok, verdict
    assert verdict.request.origin == A.node_id


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_header(missing):
    headers = signed()
    del headers[missing]
    assert check(headers).reason is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    "header, value",
    [
        (H_TIMESTAMP, "-5"),
        (H_TIMESTAMP, "1e9"),
        (H_NONCE, "xyz"),
        (H_NONCE, "A" * 32),
        (H_BODY, "0" * 63),
        (H_KEY, "not base64!"),
        (H_SIGNATURE, b64encode(b"\0" * 10)),
        (H_ORIGIN, "Z" * 52),
        (H_ON_BEHALF, "short"),
    ],
)
def test_malformed_header(header, value):
    headers = signed()
    headers[header] = value
    assert check(headers).reason is Reason.MALFORMED


def test_headers_are_case_insensitive():
    headers = {k.lower(): v for k, v in signed().items()}
    assert check(headers).ok


def test_unknown_origin():
    assert check(signed(), keysets={}).reason is Reason.UNKNOWN_ORIGIN


def test_unknown_key():
    other = NodeIdentity.generate(T0)
    headers = signed()
    # a key of another node, signing in A's name
    forged = sign_request(
        other, method="POST", target="/federation/buffers/has", body=BODY, destination=B.node_id, timestamp=T0
    )
    forged[H_ORIGIN] = A.node_id
    assert check(forged).reason is Reason.UNKNOWN_KEY
    assert check(headers).ok


def test_bad_signature_on_tampered_path_query_method_and_behalf():
    headers = signed(target="/federation/buffers/has?x=1")
    assert check(headers, target="/federation/buffers/has?x=1").ok
    assert check(headers, target="/federation/buffers/has?x=2").reason is Reason.BAD_SIGNATURE
    assert check(headers, target="/federation/results/lookup?x=1").reason is Reason.BAD_SIGNATURE
    assert check(headers, method="PUT", target="/federation/buffers/has?x=1").reason is Reason.BAD_SIGNATURE
    h2 = dict(headers, **{H_ON_BEHALF: B.node_id})
    assert check(h2, target="/federation/buffers/has?x=1").reason is Reason.BAD_SIGNATURE
    h3 = dict(headers, **{H_TIMESTAMP: str(T0 + 1)})
    assert check(h3, target="/federation/buffers/has?x=1").reason is Reason.BAD_SIGNATURE


def test_tampered_body():
    assert check(signed(), body=BODY + b" ").reason is Reason.BODY_MISMATCH
    # a body swapped *with* its hash header: the signature breaks
    headers = signed()
    headers[H_BODY] = hashlib.sha256(b"[]").hexdigest()
    assert check(headers, body=b"[]").reason is Reason.BAD_SIGNATURE
    # streamed bodies: the caller checks the body itself
    assert check(signed(), body=None).ok


def test_wrong_destination():
    c = NodeIdentity.generate(T0)
    assert check(signed(dest=c.node_id)).reason is Reason.WRONG_DESTINATION


@pytest.mark.parametrize(
    "offset, ok", [(0, True), (60, True), (-60, True), (61, False), (-61, False), (3600, False)]
)
def test_timestamp_window(offset, ok):
    verdict = check(signed(t=T0 + offset))
    assert verdict.ok is ok
    if not ok:
        assert verdict.reason is Reason.STALE


def test_revoked_and_expired_keys():
    assert check(signed(), revoked_keys={A.public_key}).reason is Reason.REVOKED_KEY
    rotated = A.rotate(T0, overlap=100)
    keysets = {A.node_id: rotated.keyset}
    assert check(signed(A, t=T0 + 50), now=T0 + 50, keysets=keysets).ok  # overlap: old key
    assert check(signed(rotated, t=T0 + 50), now=T0 + 50, keysets=keysets).ok  # and new key
    late = check(signed(A, t=T0 + 101), now=T0 + 101, keysets=keysets)
    assert late.reason is Reason.EXPIRED_KEY
    assert check(signed(rotated, t=T0 + 101), now=T0 + 101, keysets=keysets).ok


@given(http_methods, request_targets, st.binary(max_size=200), st.integers(-60, 60))
@settings(max_examples=100, deadline=None)
def test_any_signed_request_verifies_and_any_single_change_breaks_it(method, target, body, skew):
    headers = signed(method=method, target=target, body=body, t=T0 + skew)
    assert check(headers, method=method, target=target, body=body).ok
    assert not check(headers, method=method, target=target + "x", body=body).ok
    assert not check(headers, method=method, target=target, body=body + b"x").ok
    flipped = bytearray(headers[H_SIGNATURE].encode())
    flipped[5] = ord("A") if flipped[5] != ord("A") else ord("B")
    assert not check(
        dict(headers, **{H_SIGNATURE: flipped.decode()}), method=method, target=target, body=body
    ).ok


def test_line_breaks_cannot_be_smuggled():
    headers = signed()
    assert check(headers, target="/federation/buffers/has\nX").reason is Reason.MALFORMED
    with pytest.raises(ValueError):
        signed(target="/a\nb")
