"""The seeded synthetic world and the loopback stand-ins for Stripe's and Salesforce's APIs."""

from __future__ import annotations
