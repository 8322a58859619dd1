// One whole TokenOps run driven with the TypeScript client generated from the served OpenAPI
// document (`make clients`: openapi-typescript types + openapi-fetch): onboard, claim
// credentials, quote, fund with the test provider, submit the run, read the full loop payload
// until the callback is delivered and the run attested, then verify the attestation offline.
// No hand-written HTTP: every call is typed by the generated `paths`, and this file passes
// `tsc --noEmit` with `strict`. The only socket of its own is the agent's callback endpoint.
//
// Usage: node generated/build/drive.js --api URL   (after `tsc -p .`)
// Prints one JSON report; exits non-zero with the reason if any step fails.

import { createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { resolve } from "node:path";

import createClient from "openapi-fetch";

import type { components, paths } from "./generated/schema";

type Schemas = components["schemas"];

class Failed extends Error {}

/** A generated call's data, or the problem it answered, as a failure. */
function ok<T>(what: string, r: { data?: T; error?: unknown; response: Response }): T {
  if (r.data === undefined) {
    throw new Failed(`${what}: ${r.response.status} ${JSON.stringify(r.error)}`);
  }
  return r.data;
}

/** The agent's callback URL: a local endpoint that accepts TokenOps's signed callback. */
async function callbackEndpoint(): Promise<{ url: string; received: () => number; close: () => void }> {
  let count = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      count += 1;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/callback`, received: () => count, close: () => server.close() };
}

/** The evidence of a complete, consistent run: events/evidence/full.json, the bundle every
 *  driver sends (local/src/agent.rs, local/evidence.py), its ids filled in. */
function evidence(entId: string, settlementId: string): Schemas["EvidenceBundle"] {
  const ids: Record<string, string> = {
    credit_entitlement_id: entId,
    settlement_id: settlementId,
    payment_request_id: `payreq_${settlementId.split("_").slice(1).join("_")}`,
  };
  // The compiled driver runs from local/clients/generated/build.
  const template = readFileSync(resolve(__dirname, "../../../../events/evidence/full.json"), "utf8");
  const filled = template.replace(/\{\{(\w+)\}\}/g, (_, name: string) => ids[name] ?? "");
  return JSON.parse(filled) as Schemas["EvidenceBundle"];
}

/** DSSE over Ed25519, offline: a published key's signature over PAE(payloadType, payload), and
 *  the readable statement equal to the signed one. Returns the signed statement. */
function verifyAttestation(att: Schemas["Attestation"], keys: Schemas["KeySet"]): unknown {
  const env = att.envelope;
  const payload = Buffer.from(env.payload, "base64");
  const type = Buffer.from(env.payloadType);
  const pae = Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload,
  ]);
  for (const sig of env.signatures) {
    const key = keys.keys.find((k) => k.keyid === sig.keyid);
    if (key === undefined) continue;
    if (!verify(null, pae, createPublicKey(key.public_key_pem), Buffer.from(sig.sig, "base64"))) {
      throw new Failed(`signature by ${sig.keyid} does not verify`);
    }
    const signed: unknown = JSON.parse(payload.toString("utf8"));
    if (canonical(signed) !== canonical(att.statement)) {
      throw new Failed("the readable statement differs from the signed one");
    }
    return signed;
  }
  throw new Failed("no signature by a published key");
}

/** JSON with object members sorted: equal values, equal strings. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

async function main(api: string): Promise<void> {
  const callback = await callbackEndpoint();
  const start = performance.now();
  const open = createClient<paths>({ baseUrl: api });
  const agent = ok("createAgent", await open.POST("/agents", { body: {
    name: "typescript-client-agent", owner_contact: "ops@agent.example.com",
    requested_tools: ["tokenops"], callback_url: callback.url,
  } }));
  // A replayed onboarding carries no claim token (it is shown once).
  if (agent.claim_token === undefined) throw new Failed("createAgent answered without a claim token");
  const creds = ok("claimCredentials", await open.POST("/agents/{agent_id}/credentials", {
    params: { path: { agent_id: agent.agent_id } }, body: { claim_token: agent.claim_token },
  }));
  const client = createClient<paths>({ baseUrl: api, headers: { Authorization: `Bearer ${creds.access_key}` } });

  const quote = ok("createQuote", await client.POST("/quotes", { body: {
    requested_tool: "tokenops", requested_capability: "tokenops_result_package",
  } }));
  const route = ok("createSettlement", await client.POST("/settlements", { body: {
    quote_id: quote.quote_id, provider: "test_provider", credits: 2,
  } }));
  const entId = route.credit_entitlement_id;
  for (let deadline = Date.now() + 60_000; ; await sleep(50)) {
    const ent = ok("getCreditEntitlement", await client.GET("/credit-entitlements/{credit_entitlement_id}", {
      params: { path: { credit_entitlement_id: entId } },
    }));
    if (ent.status === "funded") break;
    if (Date.now() > deadline) throw new Failed(`${entId} not funded after 60 s`);
  }

  const accepted = ok("createRun", await client.POST("/runs", { body: {
    trust_profile_id: agent.trust_profile_id, quote_id: quote.quote_id,
    credit_entitlement_id: entId, requested_tool: "tokenops",
    requested_capability: "tokenops_result_package",
    evidence: evidence(entId, route.settlement_id), callback_url: callback.url,
  } }));
  let run: Schemas["FullLoopPayload"];
  for (let deadline = Date.now() + 120_000; ; await sleep(50)) {
    run = ok("getRun", await client.GET("/runs/{run_id}", { params: { path: { run_id: accepted.run_id } } }));
    if (run.state === "callback_delivered" && run.attested) break;
    if (Date.now() > deadline) throw new Failed(`${accepted.run_id} not delivered after 120 s: ${run.state}`);
  }
  const attId = run.objects["attestation"]?.[0]?.id;
  if (attId === undefined) throw new Failed("the delivered run links no attestation");
  const att = ok("getAttestation", await client.GET("/attestations/{attestation_id}", {
    params: { path: { attestation_id: attId } },
  }));
  const keys = ok("getKeys", await open.GET("/keys"));
  verifyAttestation(att, keys);
  callback.close();
  console.log(JSON.stringify({
    client: "typescript (openapi-typescript + openapi-fetch)", run_id: accepted.run_id,
    state: run.state, next_action: run.next_action, attestation_valid: true,
    callbacks_received: callback.received(), wall_ms: Math.round(performance.now() - start),
  }));
}

const at = process.argv.indexOf("--api");
const api = at >= 0 ? process.argv[at + 1] : undefined;
if (api === undefined) {
  console.error("usage: node drive.js --api URL");
  process.exit(2);
}
main(api).catch((e: unknown) => {
  console.error(`drive.ts: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
