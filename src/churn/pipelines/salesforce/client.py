"""Build a simple-salesforce client from the settings, with the daily API budget enforced.

Logins: a session id with an instance URL, or OAuth at ``/services/oauth2/token``: the JWT
bearer flow when a private key file is set (consumer key, run-as username, a 3-minute
assertion signed RS256), the username-password flow when a password is set, else client
credentials, which Salesforce serves only at the org's My Domain. The session trusts
``ca_bundle`` when one is set; TLS checks are never turned off.

Every response's ``Sforce-Limit-Info: api-usage=N/M`` is read; once the remaining calls
fall to ``api_reserve`` the next request raises :class:`ApiBudgetExhaustedError` instead of
going out. Transient failures (502/503/504, a dropped connection, a JSON body cut short) are retried
with backoff, ``max_retries`` times.

Sessions expire ("When your session expires, the exception code INVALID_SESSION_ID is
returned. If this happens, you must invoke the login() call again", Salesforce's API
guide): a 401 INVALID_SESSION_ID makes the session call :func:`login` once and resend the
request with the new token (password and client-credentials flows; every login goes
through that one function). A fixed ``SALESFORCE_SESSION_ID`` cannot be renewed: its
expiry is a :class:`~churn.errors.ConfigError` (exit 2) with one line.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ApiBudgetExhaustedError, ConfigError, SalesforceExtractError
from churn.settings import SalesforceSettings

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


# Salesforce's transient answers: a gateway or an instance briefly unavailable.
TRANSIENT_STATUS = frozenset({502, 503, 504})


class BudgetedSession(requests.Session):
    """A requests.Session that tracks Sforce-Limit-Info, refuses calls below the reserve,
    and retries transient failures (502/503/504, a dropped connection) with backoff.

    Retrying is safe because every call the service makes is idempotent: SOQL reads, and
    writes that upsert by Id or by an external id.
    """

    def __init__(
        self,
        reserve: int,
        *,
        max_retries: int = 4,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.reserve = reserve
        self.used: int | None = None
        self.limit: int | None = None
        self.calls = 0
        self.retries = 0
        #: The org's clock as of the last response (its ``Date`` header), naive UTC.
        self.server_time: datetime | None = None
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        #: Logs in again and returns the new session id (None: a fixed session id).
        self.relogin: Callable[[], str] | None = None
        self.relogins = 0
        self._token: str | None = None
        self._stale: set[str] = set()

    @property
    def remaining(self) -> int | None:
        if self.used is None or self.limit is None:
            return None
        return self.limit - self.used

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        remaining = self.remaining
        if remaining is not None and remaining <= self.reserve:
            raise ApiBudgetExhaustedError(
                f"Salesforce daily API budget: {remaining} calls left, reserve is"
                f" {self.reserve} (SALESFORCE_API_RESERVE); stopping before {method!s} {_path(url)}"
            )
        # REQUESTS_CA_BUNDLE would override a session-level verify; a request-level one wins.
        if isinstance(self.verify, str):
            kwargs.setdefault("verify", self.verify)
        self._fresh_token(kwargs)
        attempt = 0
        renewed = False
        while True:
            try:
                response = super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]
            except requests.ConnectionError:
                if attempt >= self.max_retries:
                    raise
                self._wait(attempt, None)
                attempt += 1
                continue
            self.calls += 1
            self.observe(response)
            if _session_expired(response) and not renewed:
                self._renew(method, url)
                self._fresh_token(kwargs)
                renewed = True
                continue
            if _cut_short(response) and attempt < self.max_retries:
                self._wait(attempt, None)  # a body cut short: the same request again
                attempt += 1
                continue
            if response.status_code not in TRANSIENT_STATUS or attempt >= self.max_retries:
                break
            self._wait(attempt, response.headers.get("Retry-After"))
            attempt += 1
        if response.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in response.text:
            raise ApiBudgetExhaustedError(
                f"Salesforce answered REQUEST_LIMIT_EXCEEDED to {method!s} {_path(url)}"
            )
        return response

    def _renew(self, method: str | bytes, url: str | bytes) -> None:
        """Log in again after INVALID_SESSION_ID (once a request)."""
        if self.relogin is None:
            raise expired_session_error(method, url)
        old = self._token
        self._token = self.relogin()
        self.relogins += 1
        if old:
            self._stale.add(old)

    def _fresh_token(self, kwargs: dict[str, Any]) -> None:
        """Requests built with a session id from before a re-login carry the new one."""
        headers = kwargs.get("headers")
        if not (self._token and self._stale and isinstance(headers, dict)):
            return
        for key in list(headers):
            if key.lower() != "authorization":
                continue
            scheme, _, token = str(headers[key]).partition(" ")
            if token in self._stale or token != self._token:
                kwargs["headers"] = {**headers, key: f"{scheme} {self._token}"}

    def track(self, token: str) -> None:
        """The session id in use (the one a re-login replaces)."""
        self._token = token

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        self.retries += 1
        delay = self.backoff_seconds * 2**attempt
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        self.sleep(min(delay, 60.0))

    def observe(self, response: requests.Response) -> None:
        match = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.used, self.limit = int(match[1]), int(match[2])
        self.server_time = _http_date(response.headers.get("Date")) or self.server_time


def _cut_short(response: requests.Response) -> bool:
    """A 2xx JSON answer that does not parse: a body truncated on its way (retried)."""
    if not 200 <= response.status_code < 300 or not response.content:
        return False
    if "json" not in response.headers.get("Content-Type", ""):
        return False
    try:
        json.loads(response.content)
    except ValueError:
        return True
    return False


def _session_expired(response: requests.Response) -> bool:
    """401 with Salesforce's INVALID_SESSION_ID (not the OAuth endpoint's own errors)."""
    return response.status_code == 401 and "INVALID_SESSION_ID" in response.text


def _http_date(text: str | None) -> datetime | None:
    """An HTTP ``Date`` header as naive UTC (the org's clock, to the second)."""
    if not text:
        return None
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _path(url: str | bytes) -> str:
    text = url.decode() if isinstance(url, bytes) else url
    return text.split("?", 1)[0]


def make_salesforce(
    sf_settings: SalesforceSettings, session: requests.Session | None = None
) -> Salesforce:
    """A logged-in client. ``session`` defaults to a :class:`BudgetedSession`."""
    if session is None:
        session = BudgetedSession(sf_settings.api_reserve, max_retries=sf_settings.max_retries)
    if sf_settings.ca_bundle is not None:
        session.verify = str(sf_settings.ca_bundle)
    token, instance_url = login(sf_settings, session)
    sf = Salesforce(
        instance_url=instance_url,
        session_id=token,
        version=sf_settings.api_version,
        session=session,
    )
    if isinstance(session, BudgetedSession):
        session.track(token)
        if not fixed_session(sf_settings):

            def relogin() -> str:
                new, _ = login(sf_settings, session)
                sf.session_id = new
                sf.headers["Authorization"] = "Bearer " + new
                return new

            session.relogin = relogin
    return sf


def expired_session_error(method: str | bytes, url: str | bytes) -> ConfigError:
    """The one line for a fixed SALESFORCE_SESSION_ID the org refuses (it has no renewal)."""
    return ConfigError(
        "SALESFORCE_SESSION_ID has expired or is invalid (401 INVALID_SESSION_ID on"
        f" {method!s} {_path(url)}): set a new one, or a login (SALESFORCE_CLIENT_ID"
        " and SALESFORCE_CLIENT_SECRET) the service can renew"
    )


#: How long the session check at a run's start waits for an answer (seconds): a guard
#: against a hang, not a speed check (an org that does not answer is the step's to report).
SESSION_CHECK_TIMEOUT = 60.0


def check_fixed_session(s: SalesforceSettings) -> None:
    """Before a run spends any call elsewhere: a fixed session id the org answers
    INVALID_SESSION_ID is a :class:`ConfigError` (one line, exit 2), since nothing can
    renew it. One authenticated GET of the API version's resource list (``/services/data/
    vXX.X/``, the cheapest call that needs a session). Any other answer, or none (the org
    unreachable), is left to the steps, which report it as they do today."""
    if not fixed_session(s):
        return
    assert s.instance_url is not None and s.session_id is not None
    url = f"{s.instance_url.rstrip('/')}/services/data/v{s.api_version}/"
    headers = {"Authorization": f"Bearer {s.session_id.get_secret_value()}"}
    verify: bool | str = str(s.ca_bundle) if s.ca_bundle is not None else True
    try:
        response = requests.get(url, headers=headers, verify=verify, timeout=SESSION_CHECK_TIMEOUT)
    except requests.RequestException:
        return
    if _session_expired(response):
        raise expired_session_error("GET", url)


def fixed_session(s: SalesforceSettings) -> bool:
    """A session id given in the settings (it cannot be renewed when it expires)."""
    return bool(s.instance_url and s.session_id)


def login(s: SalesforceSettings, session: requests.Session) -> tuple[str, str]:
    """The one login path: (session id, instance URL). A fixed session id is used as
    given; otherwise OAuth at ``/services/oauth2/token`` (the username-password flow when
    a username is set, else client credentials). The re-login after INVALID_SESSION_ID
    calls this too: a new flow (JWT bearer) is a branch here."""
    if fixed_session(s):
        assert s.instance_url is not None and s.session_id is not None
        return s.session_id.get_secret_value(), s.instance_url
    return _oauth(s, session)


#: The grant type of the OAuth 2.0 JWT bearer flow (RFC 7523).
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: What Salesforce answers a client-credentials login at login.salesforce.com or
#: test.salesforce.com instead of the org's My Domain.
NOT_ON_THIS_DOMAIN = "invalid_grant: request not supported on this domain"
#: How long a JWT assertion is valid: Salesforce wants ``exp`` within 3 minutes.
JWT_LIFETIME_SECONDS = 180


def token_base(s: SalesforceSettings) -> str:
    """Where ``/services/oauth2/token`` is: the instance URL when set, else the domain."""
    if s.instance_url:
        return s.instance_url.rstrip("/")
    if s.domain in ("login", "test"):
        return f"https://{s.domain}.salesforce.com"
    host = s.domain.removeprefix("https://").removeprefix("http://").rstrip("/")
    return f"https://{host}"


def jwt_audience(s: SalesforceSettings) -> str:
    """The assertion's ``aud``: test.salesforce.com for a sandbox org, else login."""
    if s.domain == "test" or ".sandbox.my.salesforce.com" in s.domain:
        return "https://test.salesforce.com"
    return "https://login.salesforce.com"


def jwt_assertion(s: SalesforceSettings, *, now: float | None = None) -> str:
    """The signed assertion of the JWT bearer flow (the claims simple-salesforce's own
    ``SalesforceLogin`` sends: iss = consumer key, sub = username, aud, exp)."""
    import jwt

    if not (s.client_id and s.username and s.private_key_file):
        raise ConfigError(
            "the JWT bearer login needs SALESFORCE_CLIENT_ID (the consumer key),"
            " SALESFORCE_USERNAME (the run-as user) and SALESFORCE_PRIVATE_KEY_FILE"
        )
    try:
        key = Path(s.private_key_file).read_bytes()
    except OSError:
        raise ConfigError(
            f"SALESFORCE_PRIVATE_KEY_FILE {s.private_key_file} cannot be read"
        ) from None
    issued = time.time() if now is None else now
    claims = {
        "iss": s.client_id,
        "sub": s.username,
        "aud": jwt_audience(s),
        "exp": int(issued) + JWT_LIFETIME_SECONDS,
    }
    try:
        return jwt.encode(claims, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError):
        raise ConfigError(
            f"SALESFORCE_PRIVATE_KEY_FILE {s.private_key_file} is not a PEM RSA private key"
        ) from None


def login_form(s: SalesforceSettings) -> dict[str, str]:
    """The token request's form for the configured flow (ConfigError when none is)."""
    if s.private_key_file is not None:
        return {"grant_type": JWT_BEARER_GRANT, "assertion": jwt_assertion(s)}
    if not (s.client_id and s.client_secret):
        raise ConfigError(
            "Salesforce login needs SALESFORCE_INSTANCE_URL + SALESFORCE_SESSION_ID;"
            " or SALESFORCE_CLIENT_ID + SALESFORCE_USERNAME + SALESFORCE_PRIVATE_KEY_FILE"
            " (JWT bearer); or SALESFORCE_CLIENT_ID + SALESFORCE_CLIENT_SECRET (client"
            " credentials at My Domain, or with SALESFORCE_USERNAME + SALESFORCE_PASSWORD)"
        )
    form = {"client_id": s.client_id, "client_secret": s.client_secret.get_secret_value()}
    if s.username and s.password:
        token = s.security_token.get_secret_value() if s.security_token else ""
        return form | {
            "grant_type": "password",
            "username": s.username,
            "password": s.password.get_secret_value() + token,
        }
    if not s.instance_url and s.domain in ("login", "test"):
        raise ConfigError(
            f"SALESFORCE_DOMAIN: the client-credentials flow needs the org's My Domain"
            f" (e.g. acme.my.salesforce.com), not {s.domain}.salesforce.com, where"
            f" Salesforce answers '{NOT_ON_THIS_DOMAIN}'"
        )
    return form | {"grant_type": "client_credentials"}


def _oauth(s: SalesforceSettings, session: requests.Session) -> tuple[str, str]:
    form = login_form(s)
    base = token_base(s)
    grant = "jwt_bearer" if form["grant_type"] == JWT_BEARER_GRANT else form["grant_type"]
    try:
        response = session.post(f"{base}/services/oauth2/token", data=form, timeout=60)
    except requests.RequestException as exc:
        raise SalesforceExtractError(
            f"Salesforce login at {base}/services/oauth2/token failed: {type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        try:
            body = response.json()
            err = str(body.get("error", "unknown"))
            if body.get("error_description"):
                err += f": {body['error_description']}"
        except (ValueError, AttributeError):
            err = f"HTTP {response.status_code}"
        raise SalesforceExtractError(
            f"Salesforce login ({grant}) at {base}/services/oauth2/token refused: {err}"
        )
    body = response.json()
    return str(body["access_token"]), str(body.get("instance_url") or base)


def query_pages(
    sf: Salesforce, soql: str, *, include_deleted: bool = False
) -> Iterator[dict[str, Any]]:
    """The pages of one SOQL query, following ``nextRecordsUrl``."""
    page = sf.query(soql, include_deleted=include_deleted)
    while True:
        yield page
        if page.get("done", True) or not page.get("nextRecordsUrl"):
            return
        page = sf.query_more(
            page["nextRecordsUrl"], identifier_is_url=True, include_deleted=include_deleted
        )


def error_codes(exc: SalesforceError) -> str:
    """Salesforce's ``errorCode: message`` list of an error answer."""
    content = exc.content
    if isinstance(content, list):
        return ", ".join(
            f"{e.get('errorCode')}: {e.get('message')}" for e in content if isinstance(e, dict)
        )
    return str(exc.status)


@contextmanager
def salesforce_errors(what: str) -> Iterator[None]:
    """Turn the SDK's and the transport's errors into :class:`SalesforceExtractError`
    naming ``what`` was being read, with Salesforce's codes and no secrets."""
    try:
        yield
    except SalesforceError as exc:
        raise SalesforceExtractError(
            f"{what}: {exc.__class__.__name__} from {exc.url}: {error_codes(exc)}"
        ) from None
    except requests.RequestException as exc:
        raise SalesforceExtractError(
            f"{what}: {type(exc).__name__} talking to the instance"
        ) from None
