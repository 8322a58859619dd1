"""One whole TokenOps run driven with the Python client that openapi-python-client generated
from the served OpenAPI document (`make clients`): onboard, claim credentials, quote, fund with
the test provider, submit the run, read the full loop payload until the callback is delivered
and the run attested, then verify the attestation offline. No hand-written HTTP: every call is a
generated function with typed models; the only sockets here are the agent's own callback
endpoint and nothing else.

Usage: python drive.py --api URL --client DIR   (DIR holds the generated `tokenops_client`)
Prints one JSON report; exits non-zero with the reason if any step fails.
"""

import argparse
import base64
import http.server
import json
import pathlib
import sys
import threading
import time


class Failed(Exception):
    pass


def ok(result, what):
    """A generated call's parsed answer, or the problem it returned, as a failure."""
    from tokenops_client.models import Problem

    if result is None:
        raise Failed(f"{what}: no parsed answer")
    if isinstance(result, Problem):
        raise Failed(f"{what}: {result.status} {result.title}: {result.detail}")
    return result


def callback_endpoint():
    """The agent's callback URL: a local endpoint that accepts TokenOps's signed callback."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/callback", received


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import evidence  # noqa: E402  (local/evidence.py: the bundles every driver sends)

def verify_attestation(att, keys):
    """DSSE over Ed25519, offline: the signature over PAE(payloadType, payload) by a published
    key, and the readable statement equal to the signed one. The signed statement."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    env = att["envelope"]
    payload = base64.b64decode(env["payload"])
    ptype = env["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    by_id = {k["keyid"]: k for k in keys["keys"]}
    for sig in env["signatures"]:
        key = by_id.get(sig["keyid"])
        if key is None:
            continue
        Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"])).verify(
            base64.b64decode(sig["sig"]), pae)  # raises InvalidSignature
        signed = json.loads(payload)
        if signed != att["statement"]:
            raise Failed("the readable statement differs from the signed one")
        return signed
    raise Failed("no signature by a published key")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--client", required=True, help="the folder that holds tokenops_client")
    args = p.parse_args()
    sys.path.insert(0, args.client)
    from tokenops_client import AuthenticatedClient, Client
    from tokenops_client.api.attestation import get_attestation, get_keys
    from tokenops_client.api.credit_entitlement import get_credit_entitlement
    from tokenops_client.api.onboarding import create_agent
    from tokenops_client.api.provider_route import create_settlement
    from tokenops_client.api.quote import create_quote
    from tokenops_client.api.run_contract import create_run, get_run
    from tokenops_client.api.trust import claim_credentials
    from tokenops_client.models import (
        AgentManifest, CredentialClaim, QuoteRequest, RunRequest, SettlementRequest)

    callback_url, received = callback_endpoint()
    start = time.monotonic()
    public = Client(base_url=args.api)
    agent = ok(create_agent.sync(client=public, body=AgentManifest.from_dict({
        "name": "python-client-agent", "owner_contact": "ops@agent.example.com",
        "requested_tools": ["tokenops"], "callback_url": callback_url})), "createAgent")
    creds = ok(claim_credentials.sync(agent.agent_id, client=public, body=CredentialClaim.from_dict(
        {"claim_token": agent.claim_token})), "claimCredentials")
    client = AuthenticatedClient(base_url=args.api, token=creds.access_key)

    quote = ok(create_quote.sync(client=client, body=QuoteRequest.from_dict({
        "requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})), "createQuote")
    route = ok(create_settlement.sync(client=client, body=SettlementRequest.from_dict({
        "quote_id": quote.quote_id, "provider": "test_provider", "credits": 2})), "createSettlement")
    ent_id = route.credit_entitlement_id
    deadline = time.monotonic() + 60
    while ok(get_credit_entitlement.sync(ent_id, client=client), "getCreditEntitlement").status != "funded":
        if time.monotonic() > deadline:
            raise Failed(f"{ent_id} not funded after 60 s")
        time.sleep(0.05)

    accepted = ok(create_run.sync(client=client, body=RunRequest.from_dict({
        "trust_profile_id": agent.trust_profile_id, "quote_id": quote.quote_id,
        "credit_entitlement_id": ent_id, "requested_tool": "tokenops",
        "requested_capability": "tokenops_result_package",
        "evidence": evidence.full(ent_id, route.settlement_id), "callback_url": callback_url})), "createRun")
    deadline = time.monotonic() + 120
    while True:
        run = ok(get_run.sync(accepted.run_id, client=client), "getRun").to_dict()
        if run["state"] == "callback_delivered" and run["attested"]:
            break
        if time.monotonic() > deadline:
            raise Failed(f"{accepted.run_id} not delivered after 120 s: {run['state']}")
        time.sleep(0.05)
    att_id = run["objects"]["attestation"][0]["id"]
    att = ok(get_attestation.sync(att_id, client=client), "getAttestation").to_dict()
    keys = ok(get_keys.sync(client=public), "getKeys").to_dict()
    statement = verify_attestation(att, keys)
    print(json.dumps({
        "client": "python (openapi-python-client)", "run_id": accepted.run_id,
        "state": run["state"], "next_action": run["next_action"],
        "attestation_valid": True, "statement_run": statement["subject"][0]["name"],
        "callbacks_received": len(received),
        "wall_ms": round((time.monotonic() - start) * 1000)}))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"drive.py: {e}", file=sys.stderr)
        sys.exit(1)
