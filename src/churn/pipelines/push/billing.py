"""The billing side of a payment-failure episode, pure: who pays and where they pay.

:mod:`churn.pipelines.push.sync` gathers, per payment-failure episode, the billing Contact
(the Account's Contact whose Email is the Stripe customer's email, case-insensitive; else
one whose AccountContactRole Role is one of ``push.billing_contact_roles``), the
invoice's ``hosted_invoice_url`` (Stripe's page where the customer pays the invoice or
updates the card) and its failed attempts as of the scoring's ``as_of``. The Task's
description names the Contact, how it was chosen (or why there is none) and the link so
the CSM can send it (its WhoId links the Contact); the Case (:mod:`churn.pipelines.push.cases`) holds the whole failure history.
No clock, no network here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

#: Stripe's decline codes in words (Stripe, Decline codes). Others are shown as their
#: code with spaces.
DECLINE_WORDS = {
    "insufficient_funds": "insufficient funds",
    "expired_card": "the card has expired",
    "lost_card": "the card was reported lost",
    "stolen_card": "the card was reported stolen",
    "pickup_card": "the issuer asked to retain the card (reported lost or stolen)",
    "fraudulent": "the issuer suspects fraud",
    "do_not_honor": "the issuer declined without a reason",
    "generic_decline": "the issuer declined without a reason",
    "card_declined": "the card was declined",
    "incorrect_cvc": "the security code was wrong",
    "incorrect_number": "the card number was wrong",
    "authentication_required": "the bank asked the customer to authenticate",
    "card_velocity_exceeded": "the card's credit limit was exceeded",
    "do_not_try_again": "the issuer asked not to try again",
    "restricted_card": "the card is restricted",
    "processing_error": "a processing error",
}


def decline_words(code: str | None) -> str:
    if not code:
        return "no decline reason given"
    return DECLINE_WORDS.get(code, code.replace("_", " "))


@dataclass(frozen=True)
class BillingContact:
    contact_id: str
    name: str | None
    email: str | None
    #: The AccountContactRole Role it was chosen by; None: its email is the customer's.
    role: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One failed payment attempt of the invoice (a failed charge), as known at as_of."""

    at: datetime
    decline_code: str | None


@dataclass(frozen=True)
class Billing:
    """What the push knows about one payment-failure episode's billing side."""

    contact: BillingContact | None = None
    hosted_invoice_url: str | None = None
    attempts: Sequence[Attempt] = field(default_factory=tuple)
    #: The invoice's status today when it is no longer open (paid, void, uncollectible):
    #: why a Case closes.
    invoice_status: str | None = None
    #: The roles a billing contact may be chosen by (``push.billing_contact_roles``).
    roles: Sequence[str] = ()


def contact_line(billing: Billing | None) -> str | None:
    """The billing contact and how it was chosen, or why there is none."""
    if billing is None:
        return None
    c = billing.contact
    if c is None:
        roles = ", ".join(billing.roles)
        why = (
            f"nor a role on it ({roles})"
            if roles
            else "and no role is configured (push.billing_contact_roles)"
        )
        return (
            f"No billing contact: no Contact of the Account has the Stripe customer's email, {why}."
        )
    who = " ".join(p for p in (c.name, f"<{c.email}>" if c.email else None) if p)
    how = (
        f"Chosen by its role on the Account ({c.role}): no Contact's email is the Stripe"
        " customer's."
        if c.role
        else "Chosen by email: the Contact's email is the Stripe customer's."
    )
    return f"Billing contact: {who or c.contact_id}. {how}"


def link_line(billing: Billing | None) -> str | None:
    if billing is None or not billing.hosted_invoice_url:
        return None
    return (
        "Invoice link for the customer (pay the invoice or update the card): "
        f"{billing.hosted_invoice_url}"
    )


def task_lines(billing: Billing | None) -> list[str]:
    """The lines the payment-failure Task's description gains: contact, link."""
    return [line for line in (contact_line(billing), link_line(billing)) if line]


def history_lines(billing: Billing | None, evidence_attempts: object) -> list[str]:
    """The failure history in words: one line per failed attempt with its date and
    decline reason; without charges, the attempt count the evidence gives."""
    attempts = list(billing.attempts) if billing else []
    if not attempts:
        if isinstance(evidence_attempts, int) and evidence_attempts > 0:
            return [f"{evidence_attempts} failed payment attempt(s); no charge details landed."]
        return []
    out = ["Failed payment attempts:"]
    for n, a in enumerate(sorted(attempts, key=lambda x: x.at), start=1):
        out.append(f"  {n}. {a.at:%Y-%m-%d %H:%M} UTC: {decline_words(a.decline_code)}")
    return out


#: Why a Case closes, by the invoice's status.
CLOSED_BECAUSE = {
    "paid": "the invoice was paid",
    "void": "the invoice was voided",
    "uncollectible": "the invoice was marked uncollectible",
}
