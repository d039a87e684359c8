-- A merge deletes the losing Accounts and sets their MasterRecordId to the winner
-- (Salesforce keeps them for queryAll): links follow metadata naming a merged-away Account
-- to the survivor. The Account stream is read again from the start so that Accounts landed
-- before this column have it too (one full read of Account; the other streams keep their
-- cursors).
ALTER TABLE core_accounts ADD COLUMN master_record_id VARCHAR;
DELETE FROM sync_state WHERE stream = 'salesforce.account';
