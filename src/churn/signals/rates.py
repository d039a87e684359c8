"""Currency rates as they stood at a date: what a score as of T converts with.

Rates are per one unit of the corporate currency, as Salesforce states them. Per
currency and point ``t``, the first of:

1. **DatedConversionRate** (orgs with advanced currency management): the rate whose
   range holds ``t``'s date, from its ``StartDate`` to the next ``StartDate`` known for
   the same code (Salesforce's ``NextStartDate``, "effectively the day after the end
   date", is read-only and recomputed when a later rate is added; the next start known
   in the warehouse does not depend on having re-read the earlier record);
2. **CurrencyType as seen** (``core_currency_rate_versions``): the version seen last at
   or before ``t`` (dated by the record's ``SystemModstamp``), else, before the first one
   seen, the first one (the earliest statement there is);
3. today's CurrencyType (``core_currency_rates``, active ones).

Pure SQL over the warehouse, like the signals; ``churn.signals.money`` converts.
"""

from __future__ import annotations

#: SQL: one point, ``$as_of``, for :func:`rates_at_sql`.
AS_OF_POINT = "SELECT CAST($as_of AS TIMESTAMP) AS t"


def rates_at_sql(points: str) -> str:
    """SQL: ``(t, iso, conversion_rate)`` for every point ``t`` of ``points`` (a query with
    one column ``t``) and every currency with a rate known then; ``iso`` upper case."""
    return f"""
    WITH pts AS ({points}),
    ranges AS (
      SELECT upper(iso_code) AS iso, conversion_rate, start_date,
             coalesce(lead(start_date) OVER (PARTITION BY upper(iso_code) ORDER BY start_date),
                      next_start_date) AS end_date
      FROM core_dated_conversion_rates WHERE NOT is_deleted
    ),
    dated AS (
      SELECT p.t, r.iso, r.conversion_rate FROM pts p JOIN ranges r
        ON r.start_date <= CAST(p.t AS DATE)
       AND (r.end_date IS NULL OR r.end_date > CAST(p.t AS DATE))
    ),
    seen AS (
      SELECT p.t, upper(v.iso_code) AS iso, v.conversion_rate
      FROM pts p CROSS JOIN core_currency_rate_versions v
      QUALIFY row_number() OVER (
        PARTITION BY p.t, upper(v.iso_code)
        ORDER BY v.seen_from <= p.t DESC,
                 CASE WHEN v.seen_from <= p.t THEN -epoch(v.seen_from)
                      ELSE epoch(v.seen_from) END) = 1
    ),
    today AS (
      SELECT p.t, upper(c.iso_code) AS iso, c.conversion_rate
      FROM pts p CROSS JOIN core_currency_rates c WHERE c.is_active
    )
    SELECT t, iso, conversion_rate FROM dated
    UNION ALL
    SELECT s.t, s.iso, s.conversion_rate FROM seen s ANTI JOIN dated d USING (t, iso)
    UNION ALL
    SELECT c.t, c.iso, c.conversion_rate FROM today c
      ANTI JOIN dated d USING (t, iso) ANTI JOIN seen s USING (t, iso)
    """


def rates_as_of_sql() -> str:
    """SQL: ``(t, iso, conversion_rate)`` at ``$as_of``."""
    return rates_at_sql(AS_OF_POINT)
