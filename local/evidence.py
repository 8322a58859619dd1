"""The evidence bundles the Python drivers send (local/mcp, local/clients, local/x402), read from
events/evidence/ like the Rust agent's (local/src/agent.rs), so every door sends the same."""

import json
import pathlib

TEMPLATES = pathlib.Path(__file__).resolve().parents[1] / "events" / "evidence"


def full(ent_id, settlement_id):
    """The evidence of a complete, consistent run."""
    return _fill("full.json", credit_entitlement_id=ent_id, settlement_id=settlement_id,
                 payment_request_id="payreq_" + settlement_id.split("_", 1)[1])


def paid(quote_id):
    """The evidence of a run paid over x402 in its own request (the ids name the quote)."""
    return _fill("paid.json", quote_id=quote_id)


def _fill(template, **ids):
    text = (TEMPLATES / template).read_text()
    for name, value in ids.items():
        text = text.replace("{{%s}}" % name, value)
    return json.loads(text)
