-- Marts written by `churn score` (engineer "signals"). One scoring run per as_of:
-- re-scoring the same as_of replaces its rows.

CREATE TABLE signal_events (
    account_id VARCHAR NOT NULL,     -- Salesforce Account Id when linked, else Stripe customer id
    signal VARCHAR NOT NULL,         -- payment_failure | downgrade | cancel_at_period_end | card_expiry | seat_utilization | seat_expansion
    score DOUBLE NOT NULL,           -- 0..1, not money
    severity VARCHAR NOT NULL,       -- high | medium | low | info
    reason VARCHAR NOT NULL,
    evidence JSON,
    as_of TIMESTAMP NOT NULL,
    episode_key VARCHAR NOT NULL,
    PRIMARY KEY (as_of, episode_key)
);

CREATE TABLE account_health (
    account_id VARCHAR NOT NULL,
    as_of TIMESTAMP NOT NULL,
    payment_health VARCHAR NOT NULL, -- Failed | At Risk | No Payment Method | Healthy
    risk_score INTEGER NOT NULL,     -- 0..100, predicted risk (known churn excluded)
    known_churn BOOLEAN NOT NULL,    -- a scheduled cancellation
    churn_effective_at TIMESTAMP,
    reporting_currency VARCHAR NOT NULL,
    total_mrr_minor BIGINT,          -- in the reporting currency; NULL when a rate is missing
    mrr_at_risk_minor BIGINT,
    next_renewal_at TIMESTAMP,
    last_successful_payment_at TIMESTAMP,
    days_since_last_payment INTEGER,
    subscription_count INTEGER NOT NULL,
    top_reasons JSON,
    stripe_customer_ids JSON,
    PRIMARY KEY (as_of, account_id)
);

-- MRR per account and original currency at as_of, with its reporting-currency value and
-- the two Salesforce rates used (units per corporate unit), so the conversion can be redone.
CREATE TABLE account_mrr (
    account_id VARCHAR NOT NULL,
    as_of TIMESTAMP NOT NULL,
    currency VARCHAR NOT NULL,
    mrr_minor BIGINT NOT NULL,
    reporting_currency VARCHAR NOT NULL,
    source_rate DECIMAL(18, 9),
    reporting_rate DECIMAL(18, 9),
    reporting_mrr_minor BIGINT,
    PRIMARY KEY (as_of, account_id, currency)
);

CREATE TABLE mrr_movements (
    account_id VARCHAR NOT NULL,
    month DATE NOT NULL,
    as_of TIMESTAMP NOT NULL,
    reporting_currency VARCHAR NOT NULL,
    movement VARCHAR NOT NULL,       -- new | expansion | contraction | churn | reactivation
    start_mrr_minor BIGINT NOT NULL,
    end_mrr_minor BIGINT NOT NULL,
    amount_minor BIGINT NOT NULL,    -- end - start
    PRIMARY KEY (as_of, account_id, month)
);
