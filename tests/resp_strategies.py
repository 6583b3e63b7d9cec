"""Hypothesis strategies that build RESP2/RESP3 replies together with the value a parser returns.

Each strategy yields ``(wire_bytes, expected)`` where ``expected`` is what hiredis returns with no
encoding (bytes for strings, list for sets, dict for maps, Push for pushes, attributes dropped).
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from anypool._compat import server_error
from anypool._resp import Push

Reply = tuple[bytes, Any]

_line_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20
).map(lambda s: s.encode())
_blob = st.one_of(st.binary(max_size=40), _line_text)


def _simple() -> st.SearchStrategy[Reply]:
    return _line_text.map(lambda b: (b"+" + b + b"\r\n", b))


def _error() -> st.SearchStrategy[Reply]:
    words = st.sampled_from(["ERR", "WRONGTYPE", "NOSCRIPT", "MOVED", "BUSY", "NOPERM"])
    return st.tuples(words, _line_text).map(
        lambda t: (
            b"-" + t[0].encode() + b" " + t[1] + b"\r\n",
            server_error(t[0] + " " + t[1].decode()),
        )
    )


def _integer() -> st.SearchStrategy[Reply]:
    return st.integers(-(2**63), 2**63 - 1).map(lambda i: (b":%d\r\n" % i, i))


def _bulk() -> st.SearchStrategy[Reply]:
    return _blob.map(lambda b: (b"$%d\r\n%b\r\n" % (len(b), b), b))


def _nulls() -> st.SearchStrategy[Reply]:
    return st.sampled_from([(b"$-1\r\n", None), (b"*-1\r\n", None), (b"_\r\n", None)])


def _boolean() -> st.SearchStrategy[Reply]:
    return st.booleans().map(lambda v: (b"#t\r\n" if v else b"#f\r\n", v))


def _double() -> st.SearchStrategy[Reply]:
    def encode(x: float) -> Reply:
        if math.isnan(x):
            return b",nan\r\n", x
        if math.isinf(x):
            return (b",inf\r\n" if x > 0 else b",-inf\r\n"), x
        return b"," + repr(x).encode() + b"\r\n", x

    return st.floats(allow_nan=True, allow_infinity=True).map(encode)


def _bignum() -> st.SearchStrategy[Reply]:
    return st.integers(-(10**40), 10**40).map(lambda i: (b"(%d\r\n" % i, str(i).encode()))


def _verbatim() -> st.SearchStrategy[Reply]:
    return st.tuples(st.sampled_from([b"txt", b"mkd"]), _blob).map(
        lambda t: (b"=%d\r\n%b:%b\r\n" % (len(t[1]) + 4, t[0], t[1]), t[1])
    )


def _blob_error() -> st.SearchStrategy[Reply]:
    return _line_text.map(
        lambda b: (b"!%d\r\nERR %b\r\n" % (len(b) + 4, b), server_error("ERR " + b.decode()))
    )


def scalars(resp3: bool = True, blob_errors: bool = True) -> st.SearchStrategy[Reply]:
    base = [_simple(), _error(), _integer(), _bulk(), _nulls()]
    if resp3:
        base += [_boolean(), _double(), _bignum(), _verbatim()]
        if blob_errors:
            base.append(_blob_error())
    return st.one_of(*base)


_hashable_keys = st.one_of(_simple(), _integer(), _bulk())


def _with_attribute(child: st.SearchStrategy[Reply]) -> st.SearchStrategy[Reply]:
    """An attribute map in front of a value: parsers drop it and return the value."""
    attribute = st.lists(st.tuples(_simple(), _integer()), min_size=0, max_size=3).map(
        lambda pairs: b"|%d\r\n" % len(pairs) + b"".join(k[0] + v[0] for k, v in pairs)
    )
    return st.tuples(attribute, child).map(lambda t: (t[0] + t[1][0], t[1][1]))


def replies(
    resp3: bool = True, *, attributes: bool = True, blob_errors: bool = True
) -> st.SearchStrategy[Reply]:
    """Any reply, nested up to a few levels (optionally without attributes or blob errors)."""

    def extend(children: st.SearchStrategy[Reply]) -> st.SearchStrategy[Reply]:
        items = st.lists(children, max_size=5)
        array = items.map(
            lambda xs: (b"*%d\r\n" % len(xs) + b"".join(x[0] for x in xs), [x[1] for x in xs])
        )
        if not resp3:
            return array
        rset = items.map(
            lambda xs: (b"~%d\r\n" % len(xs) + b"".join(x[0] for x in xs), [x[1] for x in xs])
        )
        push = items.map(
            lambda xs: (b">%d\r\n" % len(xs) + b"".join(x[0] for x in xs), Push(x[1] for x in xs))
        )
        # Distinct keys: Redis never repeats one, and hiredis misassigns values when it happens.
        rmap = st.lists(
            st.tuples(_hashable_keys, children),
            max_size=4,
            unique_by=lambda kv: (type(kv[0][1]), kv[0][1]),
        ).map(
            lambda kvs: (
                b"%%%d\r\n" % len(kvs) + b"".join(k[0] + v[0] for k, v in kvs),
                {k[1]: v[1] for k, v in kvs},
            )
        )
        if attributes:
            return st.one_of(array, rset, push, rmap, _with_attribute(children))
        return st.one_of(array, rset, push, rmap)

    return st.recursive(scalars(resp3, blob_errors), extend, max_leaves=12)


def top_level_only_hazards() -> st.SearchStrategy[Reply]:
    """Replies whose attributes and blob errors sit only at the top level (as Redis sends
    them), around nested replies that have neither, plus bulk strings that *look* like them."""
    plain = replies(attributes=False, blob_errors=False)
    lookalike = st.sampled_from([b"\n|", b"\n!", b"a\n|1\r\n", b"!\n|!"]).map(
        lambda b: (b"$%d\r\n%b\r\n" % (len(b), b), b)
    )
    nested_lookalike = st.lists(lookalike, min_size=1, max_size=3).map(
        lambda xs: (b"*%d\r\n" % len(xs) + b"".join(x[0] for x in xs), [x[1] for x in xs])
    )
    return st.one_of(plain, _with_attribute(plain), _blob_error(), lookalike, nested_lookalike)


def decoded(value: Any, encoding: str = "utf-8") -> Any:
    """What a parser configured with ``encoding`` returns for an undecoded ``value``."""
    if isinstance(value, bytes):
        return value.decode(encoding)
    if isinstance(value, Push):
        return Push(decoded(v, encoding) for v in value)
    if isinstance(value, list):
        return [decoded(v, encoding) for v in value]
    if isinstance(value, dict):
        return {decoded(k, encoding): decoded(v, encoding) for k, v in value.items()}
    return value


def normalize(value: Any) -> Any:
    """A form that compares equal exactly when values and types agree (NaN, exceptions...)."""
    if isinstance(value, BaseException):
        return ("exception", type(value), value.args)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, list):
        return (type(value), [normalize(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(normalize(k), normalize(v)) for k, v in value.items()])
    return (type(value), value)
