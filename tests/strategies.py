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
