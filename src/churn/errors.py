"""The service's error tree.

Every error the service raises on purpose derives from :class:`ChurnError`, so a caller
(the CLI, the scheduler, a notebook) can catch one class. Subclasses say what went wrong
precisely enough to decide what to do next; each message names the stream, request or
setting involved and never contains a secret.

Exit codes: 0 success, 1 failed, 2 configuration (:class:`ConfigError`), 3 partial
(:class:`PartialRunError`, :class:`ApiBudgetExhaustedError`), 4 degraded (the push wrote
every record it could, but without fields Salesforce refuses: :data:`DEGRADED_EXIT_CODE`),
75 lock held (:class:`LockHeldError`).
"""

from __future__ import annotations


class ChurnError(Exception):
    """Root of every error the service raises on purpose."""

    #: Process exit code the CLI uses when this error ends a command.
    exit_code: int = 1
    #: API calls the failed step made before this error (set by the step; run_log shows it).
    api_calls: int = 0


class ConfigError(ChurnError):
    """A setting is missing or malformed; the message names the variable or TOML key."""

    exit_code = 2


class WarehouseError(ChurnError):
    """The DuckDB warehouse cannot be opened, migrated or written."""


class WarehouseBusyError(WarehouseError):
    """Another process (a reader or a writer) holds the DuckDB file's lock; try again later."""

    exit_code = 75  # EX_TEMPFAIL, as a held run lock: cron should not count a failure


class MigrationError(WarehouseError):
    """A numbered migration failed; the warehouse is left at the previous version."""


class LockHeldError(ChurnError):
    """Another run holds the warehouse's run lock; this one did not start."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class ExtractError(ChurnError):
    """An extract could not complete. What landed before the failure is committed."""


class StripeExtractError(ExtractError):
    """Stripe answered with an error that retrying will not fix (or retries ran out).

    The message names the stream and the request that failed.
    """


class StripeRequestError(StripeExtractError):
    """One Stripe request failed for good; ``http_status`` is None when nothing answered."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class ModeMismatchError(StripeExtractError):
    """A live key met test-mode objects, or a test key met live ones; nothing is landed."""


class SalesforceExtractError(ExtractError):
    """Salesforce answered with an error that retrying will not fix."""


class ApiBudgetExhaustedError(ChurnError):
    """The org's daily API budget (Sforce-Limit-Info) is spent down to the reserve.

    The run stops cleanly: cursors stay at the last complete page, the next run resumes.
    """

    exit_code = 3


class PartialRunError(ChurnError):
    """A run landed some of its work but not all; the message says what landed."""

    exit_code = 3


class PushError(ChurnError):
    """The push to Salesforce could not complete."""


class ProductionSafetyError(PushError):
    """Refused: test-mode Stripe data would reach a production Salesforce org."""


class ScoringError(ChurnError):
    """Scoring could not run over the warehouse's history (missing tables, bad as_of)."""


class SandboxError(ChurnError):
    """The sandbox world or its loopback servers could not be built or started."""


#: A run (or push) that completed but wrote without some fields Salesforce refuses
#: (read-only, a value a restricted picklist lacks); the summary names them. Not an error
#: raised: the work is done and committed; the exit code tells cron someone should look.
DEGRADED_EXIT_CODE = 4
