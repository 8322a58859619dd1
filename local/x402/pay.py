#!/usr/bin/env python3
"""x402 v2 payer for tests, built on the official x402 Python SDK (PyPI `x402`).

Every subcommand prints exactly one JSON object on stdout; on error it prints
{"error": "..."} and exits 1.

  pay      --url U [--method M] [--json-file F | --json S] [--header 'K: V']... --payer-key K
           --network eip155:31337 --asset ADDR [--max-amount N]
      One request through the SDK's requests wrapper (x402_requests): on a 402 the SDK itself
      picks the requirement, signs, and retries with PAYMENT-SIGNATURE. No kit code touches
      the payment. Spend controls allow exactly --asset on --network (capped by --max-amount).
      -> {"status", "headers", "body", "payment_response", "elapsed_ms", ...}

  sign     --url U [--method M] [--json-file F | --json S] [--header 'K: V']... --payer-key K
           [--variant V] [--accept-index I]
      Sends the request once without payment, expects 402, decodes PAYMENT-REQUIRED with the
      SDK and builds a PAYMENT-SIGNATURE value with the SDK client (x402ClientSync +
      ExactEvmScheme + x402HTTPClientSync's header encoder); it does not send it.
      Variants (bad payments for negative tests; the signature is valid for what was signed):
        good           unchanged
        underpaid      requirements.amount - 1, then signed
        wrong-asset    requirements.asset = payTo, then signed
        wrong-network  requirements.network = eip155:1, then signed
        wrong-payto    requirements.payTo = the payer itself, then signed
        expired        hand-made authorization, validBefore = now - 600 (SDK EIP-712 helper)
        not-yet-valid  hand-made authorization, validAfter = now + 3600 (SDK EIP-712 helper)
        bad-signature  good payload, then one byte of the signature flipped
        broke-payer    signed by anvil account 9, which holds no tokens (--payer-key ignored)
      -> {"payment_required", "payment_signature", "payload", "variant", "payer", "signed_requirements"}

  balance  --rpc-url U --asset A --address X     -> {"balance": "<int>"}
  receipt  --rpc-url U --tx HASH                 -> {"found", "status", "block"}
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kitlib import ANVIL_DEV_KEYS, BROKE_PAYER_INDEX, erc20_balance, rpc  # noqa: E402

VARIANTS = (
    "good",
    "underpaid",
    "wrong-asset",
    "wrong-network",
    "wrong-payto",
    "expired",
    "not-yet-valid",
    "bad-signature",
    "broke-payer",
)


class CliError(Exception):
    pass


class JsonArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: {message}")


# ----------------------------------------------------------------- HTTP helpers
def request_parts(args) -> tuple[str, str, dict[str, str], bytes | None]:
    headers: dict[str, str] = {}
    for h in args.header or []:
        if ":" not in h:
            raise CliError(f"--header must be 'Name: value', got {h!r}")
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    body = None
    if args.json_file is not None:
        body = sys.stdin.buffer.read() if args.json_file == "-" else Path(args.json_file).read_bytes()
    elif args.json is not None:
        body = args.json.encode()
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return args.method.upper(), args.url, headers, body


def parse_body(resp):
    try:
        return resp.json()
    except ValueError:
        return resp.text


def b64json(value: str):
    return json.loads(base64.b64decode(value))


def decode_payment_response(value: str) -> dict:
    """PAYMENT-RESPONSE as sent (decoded JSON) plus whether the SDK's model accepts it."""
    from x402.http import decode_payment_response_header

    try:
        raw = b64json(value)
    except Exception as e:
        return {"_raw": value, "_decode_error": f"not base64 JSON: {e}"}
    try:
        decode_payment_response_header(value)
        raw_valid, err = True, None
    except Exception as e:
        raw_valid, err = False, str(e)
    if isinstance(raw, dict):
        raw = dict(raw)
        raw["_sdk_valid"] = raw_valid
        if err:
            raw["_sdk_error"] = err
    return raw


# ------------------------------------------------------------------------- pay
def cmd_pay(args) -> dict:
    import requests
    from eth_account import Account
    from x402 import x402ClientSync
    from x402.http.clients.requests import x402_requests
    from x402.mechanisms.evm import EthAccountSigner
    from x402.mechanisms.evm.exact import ExactEvmScheme

    method, url, headers, body = request_parts(args)
    account = Account.from_key(args.payer_key)

    client = x402ClientSync()
    client.register(args.network, ExactEvmScheme(EthAccountSigner(account)))
    allowed = {"network": args.network, "asset": args.asset}
    if args.max_amount is not None:
        allowed["max_amount_per_payment"] = str(args.max_amount)
    client.set_spend_controls({"allowed_assets": [allowed]})

    session = x402_requests(client)
    t0 = time.monotonic()
    try:
        resp = session.request(method, url, data=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as e:
        # The SDK wraps payment failures in its own PaymentError (a plain Exception).
        raise CliError(f"request failed: {e}") from None
    except Exception as e:
        raise CliError(f"{type(e).__name__}: {e}") from None
    elapsed_ms = round((time.monotonic() - t0) * 1000, 1)

    out = {
        "status": resp.status_code,
        "headers": {k.lower(): v for k, v in resp.headers.items()},
        "body": parse_body(resp),
        "payment_response": None,
        "elapsed_ms": elapsed_ms,
        "payer": account.address,
    }
    pr = resp.headers.get("PAYMENT-RESPONSE") or resp.headers.get("X-PAYMENT-RESPONSE")
    if pr:
        out["payment_response"] = decode_payment_response(pr)
    required = resp.headers.get("PAYMENT-REQUIRED")
    if required:  # e.g. a 402 after the paid retry: show why
        try:
            out["payment_required"] = b64json(required)
        except Exception:
            out["payment_required"] = required
    return out


# ------------------------------------------------------------------------ sign
def cmd_sign(args) -> dict:
    import requests
    from eth_account import Account
    from x402 import PaymentPayload, PaymentRequired, x402ClientSync
    from x402.http import x402HTTPClientSync
    from x402.mechanisms.evm import (
        EthAccountSigner,
        ExactEIP3009Authorization,
        ExactEIP3009Payload,
        TypedDataField,
        build_typed_data_for_signing,
    )
    from x402.mechanisms.evm.exact import ExactEvmScheme
    from x402.mechanisms.evm.utils import create_nonce, get_evm_chain_id

    method, url, headers, body = request_parts(args)
    key = ANVIL_DEV_KEYS[BROKE_PAYER_INDEX] if args.variant == "broke-payer" else args.payer_key
    if not key:
        raise CliError("--payer-key is required")
    account = Account.from_key(key)
    signer = EthAccountSigner(account)

    try:
        resp = requests.request(method, url, data=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as e:
        raise CliError(f"request failed: {e}") from None
    if resp.status_code != 402:
        raise CliError(f"expected 402 from the unpaid request, got {resp.status_code}: {resp.text[:500]}")
    header = resp.headers.get("PAYMENT-REQUIRED")
    if not header:
        raise CliError("402 response has no PAYMENT-REQUIRED header")

    # SDK-side decoding (validates against the SDK's v2 model); keep the server's JSON as sent.
    client = x402ClientSync()
    # eip155:* so that the wrong-network variant can be signed as well.
    client.register("eip155:*", ExactEvmScheme(signer))
    # Signing only, nothing is spent here; variants use assets the allow-list would refuse.
    client.set_spend_controls(False)
    http_client = x402HTTPClientSync(client)
    payment_required = http_client.get_payment_required_response(resp.headers.get, parse_body(resp))
    if not isinstance(payment_required, PaymentRequired):
        raise CliError(f"expected an x402 v2 PAYMENT-REQUIRED, got {type(payment_required).__name__}")
    raw_required = b64json(header)

    accepts = payment_required.accepts
    if args.accept_index is not None:
        if not 0 <= args.accept_index < len(accepts):
            raise CliError(f"--accept-index {args.accept_index} out of range ({len(accepts)} accepts)")
        original = accepts[args.accept_index]
    else:
        candidates = [r for r in accepts if r.scheme == "exact" and str(r.network).startswith("eip155:")]
        if not candidates:
            raise CliError("no exact/eip155 entry in PAYMENT-REQUIRED accepts")
        original = candidates[0]

    req = original.model_copy(deep=True)
    v = args.variant
    if v == "underpaid":
        req.amount = str(int(req.amount) - 1)
    elif v == "wrong-asset":
        req.asset = req.pay_to
    elif v == "wrong-network":
        req.network = "eip155:1"
    elif v == "wrong-payto":
        req.pay_to = account.address

    if v in ("expired", "not-yet-valid"):
        # Hand-made authorization, signed with the SDK's EIP-712 helpers.
        now = int(time.time())
        if v == "expired":
            valid_after, valid_before = 0, now - 600
        else:
            valid_after, valid_before = now + 3600, now + 3600 + int(req.max_timeout_seconds or 3600)
        extra = req.extra or {}
        if "name" not in extra or "version" not in extra:
            raise CliError("requirements.extra lacks the EIP-712 name/version")
        auth = ExactEIP3009Authorization(
            from_address=account.address,
            to=req.pay_to,
            value=str(req.amount),
            valid_after=str(valid_after),
            valid_before=str(valid_before),
            nonce=create_nonce(),
        )
        domain, types, primary_type, message = build_typed_data_for_signing(
            auth, get_evm_chain_id(str(req.network)), req.asset, extra["name"], extra["version"]
        )
        typed = {name: [TypedDataField(name=f["name"], type=f["type"]) for f in fields] for name, fields in types.items()}
        signature = signer.sign_typed_data(domain, typed, primary_type, message)
        payload = PaymentPayload(
            x402_version=2,
            payload=ExactEIP3009Payload(authorization=auth, signature="0x" + signature.hex()).to_dict(),
            accepted=req,
            resource=payment_required.resource,
            extensions=payment_required.extensions,
        )
    else:
        to_sign = payment_required.model_copy(update={"accepts": [req]})
        payload = client.create_payment_payload(to_sign)

    if v == "bad-signature":
        sig = bytearray(bytes.fromhex(payload.payload["signature"].removeprefix("0x")))
        sig[10] ^= 0xFF  # inside r: recovers to some other address (or nothing)
        payload.payload["signature"] = "0x" + sig.hex()

    header_value = http_client.encode_payment_signature_header(payload)["PAYMENT-SIGNATURE"]
    return {
        "variant": v,
        "payer": account.address,
        "payment_required": raw_required,
        "payment_signature": header_value,
        "payload": payload.model_dump(by_alias=True, exclude_none=True),
        "signed_requirements": req.model_dump(by_alias=True, exclude_none=True),
    }


# ------------------------------------------------------------ balance / receipt
def cmd_balance(args) -> dict:
    return {"balance": str(erc20_balance(args.rpc_url, args.asset, args.address))}


def cmd_receipt(args) -> dict:
    r = rpc(args.rpc_url, "eth_getTransactionReceipt", [args.tx])
    if not r:
        return {"found": False, "status": None, "block": None}
    status = r.get("status")
    block = r.get("blockNumber")
    return {
        "found": True,
        "status": int(status, 16) if status is not None else None,
        "block": int(block, 16) if block is not None else None,
    }


# ------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    ap = JsonArgumentParser(prog="pay.py", description="x402 v2 test payer (official x402 SDK)")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=JsonArgumentParser)

    def http_args(p):
        p.add_argument("--url", required=True)
        p.add_argument("--method", default="GET")
        body = p.add_mutually_exclusive_group()
        body.add_argument("--json-file", help="request body file ('-' = stdin), sent byte-for-byte")
        body.add_argument("--json", help="request body inline")
        p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
        p.add_argument("--timeout", type=float, default=60.0, help="per HTTP request, seconds")

    p = sub.add_parser("pay", help="request a paid resource through the SDK's requests wrapper")
    http_args(p)
    p.add_argument("--payer-key", required=True)
    p.add_argument("--network", default="eip155:31337")
    p.add_argument("--asset", required=True, help="the only asset the payer may pay with")
    p.add_argument("--max-amount", type=int, help="cap per payment, atomic units (default: uncapped)")

    p = sub.add_parser("sign", help="build (not send) a PAYMENT-SIGNATURE, optionally a bad one")
    http_args(p)
    p.add_argument("--payer-key")
    p.add_argument("--variant", choices=VARIANTS, default="good")
    p.add_argument("--accept-index", type=int, help="which accepts[] entry (default: first exact/eip155)")

    p = sub.add_parser("balance", help="ERC-20 balance")
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--asset", required=True)
    p.add_argument("--address", required=True)

    p = sub.add_parser("receipt", help="transaction receipt status")
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--tx", required=True)
    return ap


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = {"pay": cmd_pay, "sign": cmd_sign, "balance": cmd_balance, "receipt": cmd_receipt}[args.cmd]
        out = handler(args)
    except CliError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
