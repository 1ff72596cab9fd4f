"""Properties of the fake's psycopg-to-SQLite placeholder translation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.memory._sqlite import _translate

_literal = st.text(alphabet=st.characters(exclude_characters="%"), max_size=8)


@settings(max_examples=200)
@given(parts=st.lists(st.one_of(_literal, st.just("%%"), st.just("%s")), max_size=12))
def test_positional_translation(parts: list[str]) -> None:
    """%s becomes ?, %% becomes %, everything else is kept, and %s is counted."""
    sql = "".join(parts)
    expected = "".join({"%%": "%", "%s": "?"}.get(p, p) for p in parts)
    assert _translate(sql) == (expected, parts.count("%s"), ())


@settings(max_examples=200)
@given(
    parts=st.lists(
        st.one_of(
            _literal.map(lambda t: ("lit", t)), st.sampled_from("abc").map(lambda n: ("name", n))
        ),
        max_size=12,
    )
)
def test_named_translation(parts: list[tuple[str, str]]) -> None:
    """%(name)s becomes ?, and the names are listed in order, repeats included."""
    sql = "".join(f"%({v})s" if k == "name" else v for k, v in parts)
    expected = "".join("?" if k == "name" else v for k, v in parts)
    names = tuple(v for k, v in parts if k == "name")
    assert _translate(sql) == (expected, 0, names)
