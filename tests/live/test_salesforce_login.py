"""Issue 17: Salesforce logins that work on a real org.

Before: no JWT bearer flow at all (``SALESFORCE_PRIVATE_KEY_FILE`` did not exist), and
client credentials went to login.salesforce.com unless a My Domain was set, where
Salesforce answers ``invalid_grant: request not supported on this domain``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from churn.errors import ConfigError, SalesforceExtractError
from churn.pipelines.salesforce.client import (
    JWT_BEARER_GRANT,
    NOT_ON_THIS_DOMAIN,
    jwt_assertion,
    login_form,
    make_salesforce,
    token_base,
)
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import SalesforceSettings, load_settings


@pytest.fixture(scope="module")
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server() as running:
        yield running


def _jwt_settings(sf: RunningSalesforce, key: Path, **extra: object) -> SalesforceSettings:
    env = {
        "SALESFORCE_INSTANCE_URL": sf.instance_url,
        "SALESFORCE_CA_BUNDLE": str(sf.ca_path),
        "SALESFORCE_CLIENT_ID": sf.client_id,
        "SALESFORCE_USERNAME": sf.username,
        "SALESFORCE_PRIVATE_KEY_FILE": str(key),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return load_settings(env=env).salesforce


def test_the_jwt_bearer_flow_logs_in_with_a_key_file(sf: RunningSalesforce) -> None:
    """Salesforce, "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration": the client
    posts a JWT signed with the certificate's private key (RS256) to the token endpoint,
    grant_type ``urn:ietf:params:oauth:grant-type:jwt-bearer``; claims ``iss`` (the
    consumer key), ``sub`` (the username), ``aud`` (https://login.salesforce.com or
    https://test.salesforce.com), ``exp`` (within 3 minutes)."""
    settings = _jwt_settings(sf, sf.jwt_key_file())
    assert settings.configured
    client = make_salesforce(settings)
    assert client.query("SELECT COUNT() FROM Organization")["totalSize"] == 1
    form = login_form(settings)
    assert form["grant_type"] == JWT_BEARER_GRANT and set(form) == {"grant_type", "assertion"}
    assert jwt.get_unverified_header(form["assertion"])["alg"] == "RS256"
    claims = jwt.decode(form["assertion"], options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        sf.client_id,
        sf.username,
        "https://login.salesforce.com",
    )
    assert 0 < claims["exp"] - time.time() <= 180
    sandbox = settings.model_copy(update={"domain": "test"})
    sandbox_claims = jwt.decode(jwt_assertion(sandbox), options={"verify_signature": False})
    assert sandbox_claims["aud"] == "https://test.salesforce.com"


def test_the_stand_in_refuses_a_bad_assertion_as_salesforce_does(
    sf: RunningSalesforce, tmp_path: Path
) -> None:
    good_key = sf.jwt_key_file()
    other = tmp_path / "other.pem"
    other.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SalesforceExtractError, match="invalid_grant: invalid assertion"):
        make_salesforce(_jwt_settings(sf, other))
    with sf.org.lock:
        sf.org.users["someone@example.com"] = "x"
    with pytest.raises(SalesforceExtractError, match="user hasn't approved this consumer"):
        make_salesforce(_jwt_settings(sf, good_key, SALESFORCE_USERNAME="someone@example.com"))
    with pytest.raises(SalesforceExtractError, match="client identifier invalid"):
        make_salesforce(_jwt_settings(sf, good_key, SALESFORCE_CLIENT_ID="not-the-app"))
    settings = _jwt_settings(sf, good_key)
    expired = jwt_assertion(settings, now=time.time() - 600)
    bad_aud = jwt.encode(
        {
            **jwt.decode(jwt_assertion(settings), options={"verify_signature": False}),
            "aud": "https://x.io",
        },
        good_key.read_bytes(),
        algorithm="RS256",
    )
    session = make_salesforce(settings).session
    for assertion, description in ((expired, "expired"), (bad_aud, "audience is invalid")):
        answer = session.post(
            f"{sf.instance_url}/services/oauth2/token",
            data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
        )
        assert answer.status_code == 400
        assert description in answer.json()["error_description"]
    with pytest.raises(ConfigError, match="SALESFORCE_PRIVATE_KEY_FILE"):
        make_salesforce(_jwt_settings(sf, tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM RSA private key"):
        make_salesforce(_jwt_settings(sf, tmp_path / "junk.pem"))


def test_client_credentials_need_the_orgs_my_domain() -> None:
    """simple-salesforce's own ``SalesforceLogin`` takes the client-credentials branch only
    when ``domain not in ('login', 'test')``; Salesforce answers it at login.salesforce.com
    with ``invalid_grant: request not supported on this domain``. The settings error says
    so in one line, naming SALESFORCE_DOMAIN, before any request goes out."""
    env = {"SALESFORCE_CLIENT_ID": "app", "SALESFORCE_CLIENT_SECRET": "secret"}
    for domain in ("login", "test"):
        settings = load_settings(env={**env, "SALESFORCE_DOMAIN": domain}).salesforce
        with pytest.raises(ConfigError) as info:
            make_salesforce(settings)
        message = str(info.value)
        assert "\n" not in message and "SALESFORCE_DOMAIN" in message
        assert NOT_ON_THIS_DOMAIN in message and "secret" not in message
    mine = load_settings(env={**env, "SALESFORCE_DOMAIN": "acme.my.salesforce.com"}).salesforce
    assert login_form(mine)["grant_type"] == "client_credentials"
    assert token_base(mine) == "https://acme.my.salesforce.com"
