#!/usr/bin/env python3
"""An x402-capable MCP client paying TokenOps's tools: the official x402 SDK's MCP payer
(`x402.mcp.x402MCPSession`) over the official MCP Python SDK's `ClientSession`. No TokenOps code
on the paying side: the payer calls a tool, meets the x402 payment-required tool result, signs
with the SDK's `exact` EVM scheme and calls again with `_meta["x402/payment"]`; the settlement comes
back in the result's `_meta["x402/payment-response"]` (coinbase/x402 specs/transports-v2/mcp.md).

Usage (the kit's venv python):
  mcp_pay.py (--server BIN --api URL | --mcp-url URL) --callback URL
             --payer-key KEY --network CAIP2 --asset ADDRESS [--max-amount N]

Over stdio the script starts `BIN mcp --api URL`; over streamable HTTP the access key goes as a
bearer token. Prints the agent's callback signing secret first (one JSON line, so the caller's
receiver can verify the run's callback), then one JSON report of what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

PAYMENT = "x402/payment"


class Failed(Exception):
    pass


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import evidence  # noqa: E402  (local/evidence.py: the bundles every driver sends)

async def call(session, name, args):
    r = await session.call_tool(name, args)
    if r.isError:
        raise Failed(f"{name}: tool error {r.structuredContent}")
    return r.structuredContent


async def poll(session, name, args, done, timeout=120.0):
    start = time.monotonic()
    while True:
        v = await call(session, name, args)
        if done(v):
            return v
        if time.monotonic() - start > timeout:
            raise Failed(f"{name} {args}: not done after {timeout}s: {v}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def connect(args, key=None):
    async with contextlib.AsyncExitStack() as stack:
        if args.server:
            env = {"TOKENOPS_ACCESS_KEY": key} if key else None
            params = StdioServerParameters(command=args.server, args=["mcp", "--api", args.api], env=env)
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            read, write, _ = await stack.enter_async_context(
                streamablehttp_client(args.mcp_url, headers=headers, timeout=60))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


def payment_required_of(result):
    """What the server signalled on a paid tool (spec: structuredContent and content[0].text)."""
    text = json.loads(result.content[0].text) if result.content else {}
    sc = result.structuredContent or {}
    return {
        "is_error": result.isError,
        "x402_version": sc.get("x402Version"),
        "error": sc.get("error"),
        "accepts": sc.get("accepts"),
        "resource": sc.get("resource"),
        "text_wrapper_code": text.get("x402/error", {}).get("code"),
        "text_wrapper_has_data": "accepts" in text.get("x402/error", {}).get("data", {}),
        "payment_response": sc.get("x402/payment-response"),
        "problem_field": (sc.get("problem") or {}).get("field"),
    }


def settle_of(result):
    pr = result.payment_response
    if pr is None:
        return None
    return pr.model_dump(by_alias=True) if hasattr(pr, "model_dump") else pr


async def main():
    from eth_account import Account
    from x402 import x402Client
    from x402.mcp import x402MCPSession
    from x402.mechanisms.evm import EthAccountSigner
    from x402.mechanisms.evm.exact import ExactEvmScheme

    p = argparse.ArgumentParser()
    p.add_argument("--server")
    p.add_argument("--api")
    p.add_argument("--mcp-url")
    p.add_argument("--callback", required=True)
    p.add_argument("--payer-key", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--asset", required=True)
    p.add_argument("--max-amount", type=int)
    args = p.parse_args()
    if bool(args.server) == bool(args.mcp_url) or (args.server and not args.api):
        p.error("give --server BIN --api URL (stdio) or --mcp-url URL (streamable HTTP)")

    account = Account.from_key(args.payer_key)
    payer = x402Client()
    payer.register(args.network, ExactEvmScheme(EthAccountSigner(account)))
    allowed = {"network": args.network, "asset": args.asset}
    if args.max_amount is not None:
        allowed["max_amount_per_payment"] = str(args.max_amount)
    payer.set_spend_controls({"allowed_assets": [allowed]})

    out = {"transport": "stdio" if args.server else "streamable-http", "payer": account.address}
    async with connect(args) as session:
        agent = await call(session, "onboard", {
            "name": "x402-mcp-agent", "owner_contact": "ops@agent.example.com",
            "requested_tools": ["tokenops"], "callback_url": args.callback})
        creds = await call(session, "claim_credentials",
                           {"agent_id": agent["agent_id"], "claim_token": agent["claim_token"]})
    print(json.dumps({"callback_signing_secret": creds["callback_signing_secret"]}), flush=True)

    async with connect(args, creds["access_key"]) as session:
        quote = await call(session, "get_quote", {
            "requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})
        out["quote"] = {"quote_id": quote["quote_id"], "x402": quote.get("x402")}
        run_args = {
            "trust_profile_id": agent["trust_profile_id"], "quote_id": quote["quote_id"],
            "requested_tool": "tokenops", "requested_capability": "tokenops_result_package",
            "evidence": evidence.paid(quote["quote_id"]), "callback_url": args.callback}

        # What a client without x402 sees: the payment-required tool result, nothing written.
        out["unpaid"] = payment_required_of(await session.call_tool("submit_run", run_args))

        # A payment the token refuses (signed for the wrong amount by hand): refused, with the
        # requirements again and the reason, and the session goes on.
        accepts = out["unpaid"]["accepts"][0]
        bogus = {"x402Version": 2, "accepted": dict(accepts, amount="1"),
                 "payload": {"signature": "0x" + "00" * 65, "authorization": {
                     "from": account.address, "to": accepts["payTo"], "value": "1",
                     "validAfter": "0", "validBefore": str(int(time.time()) + 600),
                     "nonce": "0x" + "11" * 32}}}
        refused = await session.call_tool("submit_run", run_args, meta={PAYMENT: bogus})
        out["refused"] = payment_required_of(refused)

        # The x402 SDK's MCP payer: probe, pay, retry — by itself.
        paid = x402MCPSession(session, payer)
        t0 = time.monotonic()
        r = await paid.call_tool("submit_run", run_args)
        run = r.raw_result.structuredContent
        if r.is_error:
            raise Failed(f"paid submit_run: {run}")
        out["paid_run"] = {"payment_made": r.payment_made, "payment_response": settle_of(r),
                           "run_id": run["run_id"], "state": run["state"],
                           "paid_ms": round((time.monotonic() - t0) * 1000)}
        # The same call again: the first answer, and no second payment.
        again = await paid.call_tool("submit_run", run_args)
        out["paid_again"] = {"payment_made": again.payment_made, "is_error": again.is_error,
                             "run_id": (again.raw_result.structuredContent or {}).get("run_id")}
        done = await poll(session, "get_run", {"run_id": run["run_id"]},
                          lambda v: v.get("state") == "callback_delivered" and v.get("attested"))
        att = await call(session, "verify_attestation",
                         {"attestation_id": done["objects"]["attestation"][0]["id"]})
        out["run"] = {"state": done["state"], "attestation_valid": att["valid"],
                      "statement_payment": att["statement"]["predicate"].get("payment"),
                      "wall_ms": round((time.monotonic() - t0) * 1000)}

        # Prepaid credits over x402: fund with provider x402 through the same payer.
        credits = 3 * quote["price_credits"]
        f = await paid.call_tool("fund", {"quote_id": quote["quote_id"], "provider": "x402",
                                          "credits": credits})
        route = f.raw_result.structuredContent
        if f.is_error:
            raise Failed(f"paid fund: {route}")
        out["fund"] = {"payment_made": f.payment_made, "payment_response": settle_of(f),
                       "credits": credits, "status": route["status"], "provider": route["provider"],
                       "route_transaction": (route.get("payment") or {}).get("transaction"),
                       "credit_entitlement_id": route["credit_entitlement_id"]}
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failed as e:
        print(f"mcp_pay.py: {e}", file=sys.stderr)
        sys.exit(1)
