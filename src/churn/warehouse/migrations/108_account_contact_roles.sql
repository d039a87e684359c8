-- AccountContactRole: "the role that a Contact plays on an Account" (Salesforce Object
-- Reference: AccountId, ContactId, Role, a picklist, IsPrimary). Extracted only when
-- push.billing_contact_roles names a role: the push's billing contact when no Contact's
-- email is the Stripe customer's.
CREATE TABLE raw_sf_accountcontactrole AS SELECT * FROM raw_sf_account WITH NO DATA;

CREATE TABLE core_account_contact_roles (
    role_id VARCHAR PRIMARY KEY,
    account_id VARCHAR,
    contact_id VARCHAR,
    role VARCHAR,
    is_primary BOOLEAN NOT NULL DEFAULT FALSE,
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);
