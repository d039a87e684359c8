-- Currency rates as of a date (engineer "pit").
--
-- Salesforce's DatedConversionRate, "for multicurrency organizations with advanced
-- currency management enabled ... to define the exchange rates your organization uses
-- for a date range": IsoCode, ConversionRate (per one unit of the corporate currency, as
-- CurrencyType), StartDate and NextStartDate ("the date on which the next effective
-- dated exchange rate will start. Effectively the day after the end date").
CREATE TABLE raw_sf_datedconversionrate AS SELECT * FROM raw_sf_account WITH NO DATA;

CREATE TABLE core_dated_conversion_rates (
    rate_id VARCHAR PRIMARY KEY,
    iso_code VARCHAR NOT NULL,       -- upper case, as Salesforce spells it
    conversion_rate DECIMAL(18, 9) NOT NULL,
    start_date DATE NOT NULL,
    next_start_date DATE,            -- as read; the rates helper takes the next StartDate known
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

-- Orgs without it: each CurrencyType rate as seen, dated by the record's SystemModstamp
-- (when the org set it); a new version whenever the rate read differs from the last one.
CREATE TABLE core_currency_rate_versions (
    iso_code VARCHAR NOT NULL,
    conversion_rate DECIMAL(18, 9) NOT NULL,
    seen_from TIMESTAMP NOT NULL,
    PRIMARY KEY (iso_code, seen_from)
);
