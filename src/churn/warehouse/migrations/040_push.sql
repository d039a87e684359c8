-- The push to Salesforce: what was last pushed, every per-record result, and stored plans.

-- What Salesforce was last told, per record the service writes: an Account (record_key =
-- its Id) or a Task (record_key = the signal's episode_key, also the Task's external id).
-- Written in the same transaction as the push_log rows of the batch that succeeded, so a
-- kill between the call and the commit only makes the next run resend the same upsert.
CREATE TABLE push_state (
    sobject VARCHAR NOT NULL,        -- Account | Task
    record_key VARCHAR NOT NULL,
    sf_id VARCHAR,
    fields JSON NOT NULL,            -- owned field -> last value Salesforce accepted
    status VARCHAR,                  -- Task: open | closed; Account: NULL
    first_seen_at TIMESTAMP,         -- Task: when the episode was first pushed
    pushed_at TIMESTAMP NOT NULL,
    idempotency_key VARCHAR NOT NULL,
    PRIMARY KEY (sobject, record_key)
);

-- One row per record per attempt: what was sent, and Salesforce's answer.
CREATE TABLE push_log (
    run_id VARCHAR NOT NULL,
    idempotency_key VARCHAR NOT NULL,
    sobject VARCHAR NOT NULL,
    record_key VARCHAR NOT NULL,
    action VARCHAR NOT NULL,         -- update_account | create_task | update_task | close_task
    transport VARCHAR NOT NULL,      -- collections | bulk2
    success BOOLEAN NOT NULL,
    sf_id VARCHAR,
    error_code VARCHAR,              -- Salesforce's statusCode, e.g. FIELD_CUSTOM_VALIDATION_EXCEPTION
    error_message VARCHAR,           -- Salesforce's message, verbatim
    fields JSON,
    logged_at TIMESTAMP NOT NULL
);
CREATE INDEX push_log_record ON push_log (sobject, record_key);

-- Every plan computed (dry run or not), for review: the changes and why.
CREATE TABLE push_plan (
    run_id VARCHAR NOT NULL,
    planned_at TIMESTAMP NOT NULL,
    dry_run BOOLEAN NOT NULL,
    idempotency_key VARCHAR NOT NULL,
    sobject VARCHAR NOT NULL,
    record_key VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    fields JSON NOT NULL,
    last_error VARCHAR,              -- the error of the previous attempt, when this is a retry
    PRIMARY KEY (run_id, idempotency_key)
);
