"""A small SOQL parser and evaluator: the subset this service emits.

SELECT fields | COUNT() FROM obj [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n]; conditions with AND/OR/NOT/parentheses, = != <> < <= > >=, IN, NOT IN, LIKE;
literals: 'strings', numbers, true/false/null, dates and datetimes
(``2024-01-01T00:00:00Z``, ``2024-01-01T00:00:00.000+0000``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar


class SoqlError(ValueError):
    """MALFORMED_QUERY (or INVALID_FIELD when ``code`` says so)."""

    def __init__(self, message: str, code: str = "MALFORMED_QUERY") -> None:
        super().__init__(message)
        self.code = code


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:\\.|[^'\\])*')
    | (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.X,
)

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


@functools.lru_cache(maxsize=1 << 18)
def parse_datetime(text: str) -> datetime:
    """A Salesforce datetime literal or record value, as naive UTC. Cached: a filter on
    a stamp parses every record's each query (100,000 Accounts at each incremental)."""
    t = text.replace("Z", "+00:00")
    m = re.match(r"^(.*)([+-]\d{2}):?(\d{2})$", t)
    if m:
        t = f"{m[1]}{m[2]}:{m[3]}"
    value = datetime.fromisoformat(t)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def format_datetime(value: datetime) -> str:
    """Records' datetime form: ``2024-01-01T00:00:00.000+0000``."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


@dataclass(frozen=True)
class Tok:
    kind: str
    value: str


def tokenize(text: str) -> list[Tok]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SoqlError(f"unexpected token at position {pos}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append(Tok(kind, m.group(kind)))
        pos = m.end()
    return out


Cond = Callable[[Mapping[str, Any]], bool]


@dataclass
class Query:
    obj: str
    fields: list[str]
    count: bool = False
    where: Cond | None = None
    where_fields: list[str] = field(default_factory=list)
    order: list[tuple[str, bool, bool]] = field(default_factory=list)  # field, desc, nulls_last
    limit: int | None = None


class _Parser:
    def __init__(self, toks: list[Tok]) -> None:
        self.toks, self.i = toks, 0
        self.where_fields: list[str] = []

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def kw(self, *words: str) -> bool:
        t = self.peek()
        if t and t.kind == "word" and t.value.upper() in words:
            self.i += 1
            return True
        return False

    def take(self, kind: str | None = None, value: str | None = None) -> Tok:
        t = self.peek()
        if t is None:
            raise SoqlError("unexpected end of query")
        if (kind and t.kind != kind) or (value and t.value.upper() != value):
            raise SoqlError(f"unexpected token: {t.value!r}")
        self.i += 1
        return t

    def query(self) -> Query:
        self.take("word", "SELECT")
        fields, count = [], False
        while True:
            name = self.take("word").value
            if name.upper() == "COUNT" and self.peek() and self.peek().value == "(":  # type: ignore[union-attr]
                self.take("punct")
                self.take("punct")
                count = True
            else:
                fields.append(name)
            t = self.peek()
            if t and t.value == ",":
                self.i += 1
                continue
            break
        self.take("word", "FROM")
        obj = self.take("word").value
        q = Query(obj, fields, count)
        if self.kw("WHERE"):
            q.where = self.or_expr()
        q.where_fields = self.where_fields
        if self.kw("ORDER"):
            self.take("word", "BY")
            while True:
                name = self.take("word").value
                desc = self.kw("DESC")
                if not desc:
                    self.kw("ASC")
                nulls_last = desc
                if self.kw("NULLS"):
                    nulls_last = self.kw("LAST")
                    if not nulls_last:
                        self.take("word", "FIRST")
                q.order.append((name, desc, nulls_last))
                t = self.peek()
                if t and t.value == ",":
                    self.i += 1
                    continue
                break
        if self.kw("LIMIT"):
            q.limit = int(self.take("num").value)
        if self.peek() is not None:
            raise SoqlError(f"unexpected token: {self.peek().value!r}")  # type: ignore[union-attr]
        return q

    def or_expr(self) -> Cond:
        parts = [self.and_expr()]
        while self.kw("OR"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def and_expr(self) -> Cond:
        parts = [self.unary()]
        while self.kw("AND"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def unary(self) -> Cond:
        if self.kw("NOT"):
            inner = self.unary()
            return lambda r: not inner(r)
        t = self.peek()
        if t and t.value == "(":
            self.i += 1
            inner = self.or_expr()
            self.take("punct")
            return inner
        return self.comparison()

    def literal(self) -> Any:
        t = self.take()
        if t.kind == "str":
            body = t.value[1:-1]
            return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), body)
        if t.kind == "dt":
            return parse_datetime(t.value)
        if t.kind == "date":
            return date.fromisoformat(t.value)
        if t.kind == "num":
            return float(t.value) if "." in t.value else int(t.value)
        if t.kind == "word" and t.value.lower() in ("true", "false"):
            return t.value.lower() == "true"
        if t.kind == "word" and t.value.lower() == "null":
            return None
        raise SoqlError(f"unexpected token: {t.value!r}")

    def comparison(self) -> Cond:
        name = self.take("word").value
        self.where_fields.append(name)
        name = name.lower()  # records reach the evaluator with lower-case keys
        negate = self.kw("NOT")
        if self.kw("IN"):
            self.take("punct")
            values = [self.literal()]
            while self.peek() and self.peek().value == ",":  # type: ignore[union-attr]
                self.i += 1
                values.append(self.literal())
            self.take("punct")
            folded = [v.lower() if isinstance(v, str) else v for v in values]
            return lambda r: (_coerce(r.get(name), values[0]) in folded) != negate
        if negate:
            raise SoqlError("NOT must precede IN here")
        if self.kw("LIKE"):
            pattern = self.literal()
            rx = re.compile(
                "^"
                + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
                + "$",
                re.I | re.S,
            )
            return lambda r: r.get(name) is not None and bool(rx.match(str(r.get(name))))
        op = self.take("op").value
        value = self.literal()
        return lambda r: _compare(r.get(name), op, value)


def _coerce(stored: Any, like: Any) -> Any:
    if stored is None:
        return None
    if isinstance(like, datetime) and isinstance(stored, str):
        return parse_datetime(stored)
    if isinstance(like, date) and not isinstance(like, datetime) and isinstance(stored, str):
        return date.fromisoformat(stored[:10])
    if isinstance(like, str) and isinstance(stored, str):
        return stored.lower()  # SOQL string comparison is case-insensitive
    return stored


def _compare(stored: Any, op: str, value: Any) -> bool:
    if value is None:
        return (stored is None) == (op == "=")
    left = _coerce(stored, value)
    right = value.lower() if isinstance(value, str) else value
    if op == "=":
        return bool(left == right)
    if op in ("!=", "<>"):
        return bool(left != right)
    if left is None:
        return False
    try:
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except TypeError as exc:
        raise SoqlError(
            f"cannot compare {stored!r} with {value!r}", "INVALID_QUERY_FILTER_OPERATOR"
        ) from exc


def parse(text: str) -> Query:
    return _Parser(tokenize(text)).query()


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    return value


_Row = TypeVar("_Row", bound=Mapping[str, Any])


def run(q: Query, records: Sequence[_Row]) -> list[_Row]:
    """Filter, order and limit records (read by lower-case keys)."""
    rows = [r for r in records if q.where is None or q.where(r)]
    for order_name, desc, nulls_last in reversed(q.order):
        name = order_name.lower()
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        present.sort(key=lambda r: _sort_key(r[name]), reverse=desc)
        rows = present + missing if nulls_last else missing + present
    if q.limit is not None:
        rows = rows[: q.limit]
    return rows
