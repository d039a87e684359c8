-- Fields Salesforce refused for themselves (read-only for the integration user, a value a
-- restricted picklist lacks, a field that no longer exists). The push resends the record
-- without the field at once, then leaves the field out of every later run until describe
-- shows it writable again (and, for a picklist, holding the values refused), or until
-- `churn push --retry-blocked`.
CREATE TABLE push_blocked_fields (
    sobject VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    error_code VARCHAR NOT NULL,     -- Salesforce's statusCode
    error_message VARCHAR,           -- Salesforce's message, verbatim
    refused_values JSON,             -- picklist values refused (the service's own labels)
    records INTEGER NOT NULL,        -- records written without it in the run that blocked it
    run_id VARCHAR NOT NULL,
    blocked_at TIMESTAMP NOT NULL,
    PRIMARY KEY (sobject, field)
);

-- A change put off by backoff (the same record and values rejected n times in a row): how
-- many more push runs it waits (it is sent 1, 2, 4... runs after its last rejection).
-- NULL for the changes the run sends.
ALTER TABLE push_plan ADD COLUMN runs_to_wait INTEGER;
