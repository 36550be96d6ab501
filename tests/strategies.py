"""Hypothesis strategies shared by the tests."""

from hypothesis import strategies as st

HEX = "0123456789abcdef"

checksums = st.text(alphabet=HEX, min_size=64, max_size=64)

#: Strings that look a bit like checksums but are not valid ones.
near_checksums = st.one_of(
    st.text(alphabet=HEX, min_size=0, max_size=63),
    st.text(alphabet=HEX, min_size=65, max_size=80),
    st.text(alphabet=HEX.upper(), min_size=64, max_size=64).filter(lambda s: any(c.isalpha() for c in s)),
    checksums.map(lambda s: s + "\n"),
    checksums.map(lambda s: " " + s),
    checksums.map(lambda s: s[:10] + "\u0663" + s[11:]),  # Arabic-Indic digit three
    checksums.map(lambda s: s[:20] + "\x00" + s[21:]),
    checksums.map(lambda s: "0x" + s[2:]),
    st.text(min_size=64, max_size=64).filter(lambda s: any(c not in HEX for c in s)),
)

# -- federation (tests/federation) ------------------------------------------------------

B32 = "abcdefghijklmnopqrstuvwxyz234567"

#: well-formed node ids (52 lowercase base32 characters), not necessarily of a real key
node_ids = st.text(alphabet=B32, min_size=52, max_size=52)

#: request targets as sent on the wire: a path, sometimes with a query
request_targets = st.builds(
    lambda parts, query: "/federation/" + "/".join(parts) + (f"?{query}" if query else ""),
    st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.%", min_size=1, max_size=12), max_size=4),
    st.one_of(st.just(""), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=&%", max_size=30)),
)

http_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])

#: JSON values that have a canonical form (no floats)
canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

#: placement inputs: checksum -> size
placement_inputs = st.dictionaries(checksums, st.integers(0, 10**9), min_size=0, max_size=6)
