"""The apply's small pieces: exact money in JSON, the budget meter, error mapping."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests
from simple_salesforce.exceptions import SalesforceRefusedRequest

from churn.errors import ApiBudgetExhaustedError, PushError
from churn.pipelines.push.apply import CallMeter, call_error, json_body


def test_json_body_writes_decimals_exactly() -> None:
    text = json_body({"a": Decimal("1234.50"), "b": [Decimal("0.001")], "c": "x", "d": None})
    assert text == '{"a":1234.50,"b":[0.001],"c":"x","d":null}'
    assert json.loads(text, parse_float=Decimal)["a"] == Decimal("1234.50")


def _response(limit: str | None) -> requests.Response:
    response = requests.Response()
    if limit is not None:
        response.headers["Sforce-Limit-Info"] = limit
    return response


def test_meter_counts_calls_and_stops_before_the_reserve() -> None:
    meter = CallMeter(reserve=10)
    meter.check(1, "first call")  # nothing known yet: go
    meter.hook(_response("api-usage=88/100"))
    meter.hook(_response(None))
    assert meter.calls == 2 and meter.remaining == 12
    meter.check(2, "a call")
    with pytest.raises(ApiBudgetExhaustedError, match="12 calls left, reserve 10"):
        meter.check(3, "a bigger job")


def test_request_limit_exceeded_is_a_budget_error_and_others_name_the_request() -> None:
    limit = SalesforceRefusedRequest(
        "u", 403, "r", [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests"}]
    )
    assert isinstance(call_error(limit, "PATCH composite/sobjects"), ApiBudgetExhaustedError)
    other = SalesforceRefusedRequest(
        "u", 403, "r", [{"errorCode": "INSUFFICIENT_ACCESS", "message": "no access"}]
    )
    err = call_error(other, "PATCH composite/sobjects")
    assert isinstance(err, PushError) and not isinstance(err, ApiBudgetExhaustedError)
    assert "PATCH composite/sobjects" in str(err) and "INSUFFICIENT_ACCESS: no access" in str(err)
