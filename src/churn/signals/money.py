"""Money: integer minor units plus an ISO code; the one place minor units become decimals.

Conversion uses Salesforce's rates (units of a currency per one unit of the corporate
currency) scaled to integers, so every step is integer arithmetic with one rounding
(half away from zero). The SQL builders here do the same arithmetic inside DuckDB, so
set-based code and Python agree to the unit.
"""

from __future__ import annotations

from decimal import Decimal

#: Stripe's zero-decimal and three-decimal currencies; every other one has 2.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
#: Rates are DECIMAL(18, 9) in the warehouse: scaled by 10**9 they are exact integers.
RATE_SCALE = 10**9
#: Minor units are stored as BIGINT.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def exponent(currency: str) -> int:
    """Digits after the decimal point of ``currency`` (any case)."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_decimal(minor: int, currency: str) -> Decimal:
    """Minor units as a Decimal amount in the major unit (exact)."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"money must be integer minor units, got {type(minor).__name__}")
    return Decimal(minor).scaleb(-exponent(currency))


def to_minor(amount: Decimal, currency: str) -> int:
    """A Decimal amount in the major unit as minor units; refuses sub-minor amounts."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a Decimal, got {type(amount).__name__}")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency.upper()} allows")
    return int(scaled)


def round_div(num: int, den: int) -> int:
    """num / den rounded half away from zero, in integers."""
    if den <= 0:
        raise ValueError("denominator must be positive")
    q, r = divmod(abs(num), den)
    if 2 * r >= den:
        q += 1
    return q if num >= 0 else -q


def rate_units(rate: Decimal) -> int:
    """A DECIMAL(18, 9) rate as an exact integer count of 10**-9."""
    scaled = rate * RATE_SCALE
    if scaled != scaled.to_integral_value() or scaled <= 0:
        raise ValueError(f"rate {rate} is not a positive DECIMAL(18, 9)")
    return int(scaled)


def convert(
    minor: int, source: str, target: str, source_rate: Decimal, target_rate: Decimal
) -> int:
    """``minor`` units of ``source`` in minor units of ``target``.

    Rates are per one unit of the corporate currency, as Salesforce's CurrencyType states
    them: amount_target = amount_source / source_rate * target_rate.
    """
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"money must be integer minor units, got {type(minor).__name__}")
    shift = exponent(target) - exponent(source)
    num = minor * rate_units(target_rate) * 10 ** max(shift, 0)
    den = rate_units(source_rate) * 10 ** max(-shift, 0)
    result = round_div(num, den)
    if not INT64_MIN <= result <= INT64_MAX:
        raise OverflowError(f"{minor} {source.upper()} in {target.upper()} exceeds BIGINT")
    return result


def sql_exponent(column: str) -> str:
    """SQL for the exponent of the currency in ``column``."""
    zero = ", ".join(f"'{c}'" for c in sorted(ZERO_DECIMAL))
    three = ", ".join(f"'{c}'" for c in sorted(THREE_DECIMAL))
    return (
        f"(CASE WHEN lower({column}) IN ({zero}) THEN 0 "
        f"WHEN lower({column}) IN ({three}) THEN 3 ELSE 2 END)"
    )


def sql_round_div(num: str, den: str) -> str:
    """SQL for num / den (den > 0) rounded half away from zero, in HUGEINT arithmetic."""
    n, d = f"CAST({num} AS HUGEINT)", f"CAST({den} AS HUGEINT)"
    return f"(sign({n}) * ((2 * abs({n}) + {d}) // (2 * {d})))"


def sql_convert_factors(
    source: str, target: str, source_rate: str, target_rate: str
) -> tuple[str, str]:
    """SQL of the two HUGEINT factors of a conversion, ``(num, den)``: an amount converts
    to ``round(minor x num / den)`` (:func:`sql_convert_by`). They depend on the currencies
    and rates only, so a caller converting many amounts computes them once per pair."""
    shift = f"({sql_exponent(target)} - {sql_exponent(source)})"
    src = f"CAST(CAST({source_rate} AS DECIMAL(38, 9)) * {RATE_SCALE} AS HUGEINT)"
    tgt = f"CAST(CAST({target_rate} AS DECIMAL(38, 9)) * {RATE_SCALE} AS HUGEINT)"
    num = f"({tgt} * CAST(pow(10, greatest({shift}, 0)) AS HUGEINT))"
    den = f"({src} * CAST(pow(10, greatest(-{shift}, 0)) AS HUGEINT))"
    return num, den


def sql_convert_by(minor: str, num: str, den: str) -> str:
    """SQL: ``minor`` converted by the factors of :func:`sql_convert_factors`; NULL when a
    factor is NULL (no rate) or the result exceeds BIGINT. The product is exact whatever
    the grouping (integers; every factor is at least 1, so no partial product is larger)."""
    return f"TRY_CAST({sql_round_div(f'(CAST({minor} AS HUGEINT) * {num})', den)} AS BIGINT)"


def sql_convert(minor: str, source: str, target: str, source_rate: str, target_rate: str) -> str:
    """SQL twin of :func:`convert`; NULL when a rate is NULL or the result exceeds BIGINT."""
    return sql_convert_by(minor, *sql_convert_factors(source, target, source_rate, target_rate))


#: Symbols for the currencies people recognise at a glance; others show their ISO code.
SYMBOLS: dict[str, str] = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "CAD": "CA$",
    "AUD": "A$",
    "CHF": "CHF ",
    "INR": "₹",
    "KRW": "₩",
    "BRL": "R$",
    "SEK": "SEK ",
}


def display(minor: int | None, currency: str | None, *, whole: bool = False) -> str:
    """An amount for people: ``$1,234.50``, ``¥1,235``, ``KWD 1.235`` (the currency's own
    decimals); ``whole`` rounds to the major unit (half up) for sentences and headlines
    (``$1,960``); a whole amount drops its ``.00``. ``n/a`` when the amount or its
    currency is unknown."""
    from decimal import ROUND_HALF_UP

    if minor is None or not currency:
        return "n/a"
    value = to_decimal(int(minor), currency)
    places = exponent(currency)
    if whole or value == value.to_integral_value():
        value = value.quantize(Decimal(1), rounding=ROUND_HALF_UP)
        places = 0
    code = currency.upper()
    sign = "-" if value < 0 else ""
    return f"{sign}{SYMBOLS.get(code, code + ' ')}{abs(value):,.{places}f}"
