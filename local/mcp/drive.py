"""Drives TokenOps through its MCP tools with the official MCP Python SDK (PyPI `mcp`), as an LLM
agent's MCP client would: no TokenOps-specific client code, only `tools/list` and `tools/call`.

Usage: python local/mcp/drive.py --api URL --callback URL (--server BIN | --mcp-url URL)
  --server BIN: the `tokenops` binary; the script starts `BIN mcp --api URL` over stdio.
  --mcp-url URL: streamable HTTP (the local server's `/mcp`); the key goes as a bearer token.

Prints the agent's callback signing secret as soon as it has it (one JSON line), then one JSON
object: what it saw (tool names, the run's end state, the checks' results, each
error case's problem, the wall time of the run). The Rust test (tests/tests/mcp.rs) asserts on it.
"""

import argparse
import asyncio
import contextlib
import json
import pathlib
import sys
import time

import anyio
import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.subscriptions import listen
import mcp_types as types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import evidence  # noqa: E402  (local/evidence.py: the bundles every driver sends)

full_evidence = evidence.full


GAP = ("payment_request", "usage_receipt")


def partial_evidence(ent_id, settlement_id):
    """The seed's partial case: payment request and usage receipt missing."""
    e = full_evidence(ent_id, settlement_id)
    e["records"] = [r for r in e["records"] if r["category"] not in GAP]
    return e


def missing_evidence(ent_id, settlement_id):
    """The missing part of `partial_evidence`, as the agent supplies it."""
    records = [r for r in full_evidence(ent_id, settlement_id)["records"] if r["category"] in GAP]
    return {"evidence": {"records": records}}


class Failed(Exception):
    pass


async def call(session, name, args):
    """A tool call that must succeed: its structured content."""
    r = await session.call_tool(name, args)
    if r.is_error:
        raise Failed(f"{name}: tool error {r.structured_content}")
    return r.structured_content


async def call_error(session, name, args):
    """A tool call that must fail as a tool error (not a protocol error): its problem."""
    r = await session.call_tool(name, args)
    if not r.is_error:
        raise Failed(f"{name}: expected a tool error, got {r.structured_content}")
    return r.structured_content


async def poll(session, name, args, done, timeout=60.0):
    start = time.monotonic()
    while True:
        v = await call(session, name, args)
        if done(v):
            return v
        if time.monotonic() - start > timeout:
            raise Failed(f"{name} {args}: not done after {timeout}s: {v}")
        await asyncio.sleep(0.05)


def settled(payload):
    return payload["next_action"] in ("ready_for_downstream_agent", "none")


async def updates_while(session, init, uri, act):
    """Subscribes to `uri`, runs `act`, and reads the resource on each update until the run is
    settled. Protocol 2026-07-28: `subscriptions/listen`, which the server ends once the run is
    settled; 2025: `resources/subscribe`, the updates arriving through the session's message
    handler. None when the server offers no subscriptions on this connection."""
    caps = init.capabilities.resources
    if not (caps and caps.subscribe):
        return None
    states = []
    with anyio.fail_after(60):
        if session.protocol_version >= "2026-07-28":
            async with listen(session, resource_subscriptions=[uri]) as sub:
                honored = list(sub.honored.resource_subscriptions or [])
                await act()
                async for event in sub:
                    payload = json.loads((await session.read_resource(event.uri)).contents[0].text)
                    states.append(payload["state"])
            return {"protocol": "subscriptions/listen", "honored": honored, "states": states}
        await session.subscribe_resource(uri)
        await act()
        while True:
            updated = await session.updates.receive()
            payload = json.loads((await session.read_resource(updated)).contents[0].text)
            states.append(payload["state"])
            if settled(payload):
                break
        await session.unsubscribe_resource(uri)
        return {"protocol": "resources/subscribe", "honored": [uri], "states": states}


@contextlib.asynccontextmanager
async def connect(args, key=None):
    """A session: over stdio (the key in the server's environment) with the 2025 handshake most
    desktop clients still use, or over streamable HTTP (the key as a bearer token) with the
    2026-07-28 `server/discover` a stateless server is made for. `session.updates` receives the
    URIs of `notifications/resources/updated`."""
    async with contextlib.AsyncExitStack() as stack:
        if args.server:
            env = {"TOKENOPS_ACCESS_KEY": key} if key else None
            params = StdioServerParameters(command=args.server, args=["mcp", "--api", args.api], env=env)
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
            read, write = await stack.enter_async_context(streamable_http_client(args.mcp_url, http_client=http))
        send_update, updates = anyio.create_memory_object_stream(100)

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                await send_update.send(str(message.params.uri))

        session = await stack.enter_async_context(ClientSession(read, write, message_handler=on_message))
        session.updates = updates
        if args.server:
            init = await session.initialize()
            info = {"name": init.server_info.name, "protocol": init.protocol_version}
        else:
            init = await session.discover()
            server = (init.meta or {}).get("io.modelcontextprotocol/serverInfo") or {}
            info = {"name": server.get("name"), "protocol": session.protocol_version}
        yield session, init, info


async def onboard(session, name, callback):
    agent = await call(session, "onboard", {
        "name": name, "owner_contact": "ops@agent.example.com", "requested_tools": ["tokenops"],
        "callback_url": callback, "description": "an MCP-driven agent"})
    creds = await call(session, "claim_credentials",
                       {"agent_id": agent["agent_id"], "claim_token": agent["claim_token"]})
    return agent, creds


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server")
    p.add_argument("--mcp-url")
    p.add_argument("--api", required=True)
    p.add_argument("--callback", required=True)
    args = p.parse_args()
    out = {"transport": "stdio" if args.server else "streamable-http"}
    start = time.monotonic()
    # Anonymous: onboard and claim. Over stdio the session adopts the claimed key; over HTTP a
    # call without a bearer token is refused like the API refuses it.
    async with connect(args) as (session, init, info):
        out["server"] = info
        tools = (await session.list_tools()).tools
        out["tools"] = {t.name: {"input_type": t.input_schema.get("type"),
                                 "output_schema": t.output_schema is not None,
                                 "description_words": len((t.description or "").split())}
                        for t in tools}
        agent, creds = await onboard(session, "mcp-agent", args.callback)
        # At once, on its own line: the test's callback receiver needs the secret before the
        # run's signed callback arrives.
        print(json.dumps({"callback_signing_secret": creds["callback_signing_secret"]}), flush=True)
        r = await session.call_tool("get_quote", {
            "requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})
        out["quote_right_after_claim"] = "error" if r.is_error else "ok"
        if r.is_error:
            out["quote_without_key"] = r.structured_content
    key = creds["access_key"]
    async with connect(args, key) as (session, init, _):
        quote = await call(session, "get_quote", {
            "requested_tool": "tokenops", "requested_capability": "tokenops_result_package"})
        route = await call(session, "fund", {
            "quote_id": quote["quote_id"], "provider": "test_provider", "credits": 2})
        ent_id = route["credit_entitlement_id"]
        await poll(session, "get_object", {"id": ent_id}, lambda e: e.get("status") == "funded")
        run_args = {
            "trust_profile_id": agent["trust_profile_id"], "quote_id": quote["quote_id"],
            "credit_entitlement_id": ent_id, "requested_tool": "tokenops",
            "requested_capability": "tokenops_result_package",
            "evidence": full_evidence(ent_id, route["settlement_id"]),
            "callback_url": args.callback}
        run = await call(session, "submit_run", run_args)
        run_id = run["run_id"]
        done = await poll(session, "get_run", {"run_id": run_id},
                          lambda r: r.get("state") == "callback_delivered" and r.get("attested"))
        att_id = done["objects"]["attestation"][0]["id"]
        attestation = await call(session, "verify_attestation", {"attestation_id": att_id})
        ledger = await call(session, "verify_ledger", {})
        out["run"] = {"run_id": run_id, "state": done["state"], "next_action": done["next_action"],
                      "attestation_valid": attestation["valid"], "ledger_valid": ledger["valid"],
                      "wall_ms": round((time.monotonic() - start) * 1000)}
        # A retried call (same arguments) gets the first answer: no second run.
        out["retried_submit_run_id"] = (await call(session, "submit_run", run_args))["run_id"]
        # The evidence gap: partial evidence → exception ticket → supply_evidence → delivered.
        gap_args = dict(run_args, evidence=partial_evidence(ent_id, route["settlement_id"]))
        gap = (await call(session, "submit_run", gap_args))["run_id"]
        waiting = await poll(session, "get_run", {"run_id": gap},
                             lambda r: r.get("next_action") == "supply_missing_evidence")
        ticket = await call(session, "get_object",
                            {"id": waiting["objects"]["exception_recovery"][0]["id"]})
        # Subscribed to the waiting run, the agent hears each change until it is settled.
        supply = lambda: call(session, "supply_evidence",
                              dict(missing_evidence(ent_id, route["settlement_id"]), run_id=gap))
        out["updates"] = await updates_while(session, init, f"tokenops://runs/{gap}", supply)
        if out["updates"] is None:
            await supply()
        healed = await poll(session, "get_run", {"run_id": gap},
                            lambda r: r.get("state") == "callback_delivered" and r.get("attested"))
        out["evidence_gap"] = {"run_id": gap, "ticket": ticket["exception_type"],
                               "missing": ticket["missing_items"], "state": healed["state"],
                               "replays": healed.get("replays")}
        # Malformed arguments: a tool error naming the field; the session goes on.
        out["bad_run_id"] = await call_error(session, "get_run", {"run_id": "not-a-run"})
        out["missing_field"] = await call_error(session, "claim_credentials", {"agent_id": agent["agent_id"]})
        out["after_errors_state"] = (await call(session, "get_run", {"run_id": run_id}))["state"]
        out["queue"] = sorted((await call(session, "queue_status", {})).keys())
        # Resources: the manifest, the OpenAPI document, the schemas, and the run by its URI.
        resources = (await session.list_resources()).resources
        templates = (await session.list_resource_templates()).resource_templates
        manifest = json.loads((await session.read_resource("tokenops://manifest")).contents[0].text)
        run_resource = json.loads((await session.read_resource(f"tokenops://runs/{run_id}")).contents[0].text)
        out["resources"] = {"uris": sorted(str(r.uri) for r in resources),
                            "templates": [t.uri_template for t in templates],
                            "manifest_keys": sorted(manifest.keys())[:5],
                            "run_state": run_resource["state"]}
        unknown = None
        try:
            r = await session.call_tool("no_such_tool", {})
            unknown = "tool error" if r.is_error else None
        except Exception as e:  # a protocol error: the tool does not exist
            unknown = type(e).__name__
        out["unknown_tool"] = unknown
    # Another agent: the first agent's run does not exist for it.
    async with connect(args) as (session, _, _):
        _, other = await onboard(session, "mcp-other-agent", args.callback)
    async with connect(args, other["access_key"]) as (session, _, _):
        out["other_agents_run"] = await call_error(session, "get_run", {"run_id": run_id})
        try:
            await session.read_resource(f"tokenops://runs/{run_id}")
            out["other_agents_run_resource"] = "read"
        except Exception as e:  # resource not found, as the API's 404
            out["other_agents_run_resource"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failed as e:
        print(f"drive.py: {e}", file=sys.stderr)
        sys.exit(1)
