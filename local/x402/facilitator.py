#!/usr/bin/env python3
"""Minimal HTTP x402 facilitator for local tests, over the official x402 Python SDK.

The SDK (PyPI `x402`) ships the facilitator logic (x402FacilitatorSync + the `exact` EVM
scheme) but no HTTP server; this file is that server, on stdlib ThreadingHTTPServer:

    GET  /supported   -> SupportedResponse JSON
    POST /verify      {"x402Version", "paymentPayload", "paymentRequirements"} -> VerifyResponse
    POST /settle      same body                                                -> SettleResponse

JSON is camelCase (the SDK's pydantic models, by_alias). An invalid payment is a 200 with
isValid:false / success:false (the SDK's HTTP facilitator client treats any other status as
an exception). A malformed body is a 400 with {"error", "message"}; an internal failure
(e.g. the RPC is down) is a 500 with the same shape.

Run with the kit's venv python:
    facilitator.py --port 4020 --rpc-url http://127.0.0.1:8545 \
        --private-key 0x... --network eip155:31337
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import ValidationError
from x402 import SchemeNotFoundError, x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, ExactEvmSchemeConfig
from x402.mechanisms.evm.types import ExactEIP3009Payload, is_permit2_payload
from x402.schemas import (
    PaymentPayload,
    SettleResponse,
    VerifyResponse,
    parse_payment_payload,
    parse_payment_requirements,
)

ERR_UNSUPPORTED_NETWORK = "unsupported_network"
ERR_UNSUPPORTED_SCHEME = "unsupported_scheme"
MAX_BODY = 1 << 20


class BadRequest(Exception):
    """The request body is not a well-formed verify/settle request."""


def log(msg: str) -> None:
    sys.stderr.write(f"[facilitator {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Facilitator:
    """Wraps the SDK facilitator and adds the network allow-list check the SDK lacks.

    The SDK routes by CAIP family: registering eip155:31337 also accepts requirements that
    claim any other eip155:* chain (they would then fail later, on signature or chain).
    Here a requirement for a network we were not started for is refused up front.
    """

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        networks: list[str],
        confirmation_timeout: float,
        simulate_in_settle: bool = False,
    ):
        self.networks = list(networks)
        self.signer = FacilitatorWeb3Signer(
            private_key=private_key,
            rpc_url=rpc_url,
            confirmation_timeout_seconds=confirmation_timeout,
        )
        self.sdk = x402FacilitatorSync()
        # Register exactly our network(s) for v2 `exact`; deliberately not
        # register_exact_evm_facilitator(), which also registers 21 public v1 networks.
        config = ExactEvmSchemeConfig(simulate_in_settle=simulate_in_settle)
        self.sdk.register(self.networks, ExactEvmFacilitatorScheme(self.signer, config))

    def supported(self) -> dict:
        return self.sdk.get_supported().model_dump(by_alias=True, exclude_none=True)

    @staticmethod
    def parse(body: bytes):
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object")
        raw_payload = data.get("paymentPayload")
        raw_requirements = data.get("paymentRequirements")
        if not isinstance(raw_payload, dict) or not isinstance(raw_requirements, dict):
            raise BadRequest("paymentPayload and paymentRequirements must be JSON objects")
        version = data.get("x402Version", raw_payload.get("x402Version"))
        if version != 2 or raw_payload.get("x402Version", 2) != 2:
            raise BadRequest(f"only x402Version 2 is supported (got {version!r})")
        try:
            payload = parse_payment_payload(raw_payload)
            requirements = parse_payment_requirements(2, raw_requirements)
        except (ValidationError, ValueError) as e:
            raise BadRequest(f"invalid paymentPayload/paymentRequirements: {e}") from None
        assert isinstance(payload, PaymentPayload)
        # The exact-EVM scheme would raise KeyError/ValueError deep inside on a malformed
        # inner payload; check its shape here so that is a 400, not a 500.
        if str(payload.accepted.network).startswith("eip155:") and not is_permit2_payload(payload.payload):
            try:
                inner = ExactEIP3009Payload.from_dict(payload.payload)
                int(inner.authorization.value), int(inner.authorization.valid_after)
                int(inner.authorization.valid_before)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise BadRequest(f"invalid exact EVM payload: {e!r}") from None
        return payload, requirements

    @staticmethod
    def payer_of(payload: PaymentPayload) -> str | None:
        auth = payload.payload.get("authorization") if isinstance(payload.payload, dict) else None
        return auth.get("from") if isinstance(auth, dict) else None

    def _refusal(self, payload, requirements) -> tuple[str, str] | None:
        if requirements.network not in self.networks:
            return ERR_UNSUPPORTED_NETWORK, f"facilitator serves {self.networks}, not {requirements.network}"
        return None

    def verify(self, payload, requirements) -> VerifyResponse:
        refusal = self._refusal(payload, requirements)
        if refusal:
            return VerifyResponse(
                is_valid=False, invalid_reason=refusal[0], invalid_message=refusal[1], payer=self.payer_of(payload)
            )
        try:
            return self.sdk.verify(payload, requirements)
        except SchemeNotFoundError as e:
            return VerifyResponse(
                is_valid=False, invalid_reason=ERR_UNSUPPORTED_SCHEME, invalid_message=str(e), payer=self.payer_of(payload)
            )

    def settle(self, payload, requirements) -> SettleResponse:
        refusal = self._refusal(payload, requirements)
        if refusal is None:
            try:
                return self.sdk.settle(payload, requirements)
            except SchemeNotFoundError as e:
                refusal = (ERR_UNSUPPORTED_SCHEME, str(e))
        return SettleResponse(
            success=False,
            error_reason=refusal[0],
            error_message=refusal[1],
            payer=self.payer_of(payload),
            transaction="",
            network=str(requirements.network),
        )


def make_handler(fac: Facilitator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "x402-local-facilitator/1"

        def log_message(self, format, *args):  # silence the default access log
            pass

        def _send_json(self, status: int, obj) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks, total = [], 0
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    total += size
                    if total > MAX_BODY:
                        raise BadRequest("body too large")
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise BadRequest("body too large")
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self):
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/supported":
                self._send_json(200, fac.supported())
            elif path in ("/health", "/healthz"):
                self._send_json(200, {"ok": True})
            else:
                self._send_json(404, {"error": "not_found", "message": f"no route GET {path}"})

        def do_POST(self):
            t0 = time.monotonic()
            path = self.path.split("?", 1)[0].rstrip("/")
            payer = None
            try:
                body = self._read_body()
                if path not in ("/verify", "/settle"):
                    self._send_json(404, {"error": "not_found", "message": f"no route POST {path}"})
                    return
                payload, requirements = fac.parse(body)
                payer = fac.payer_of(payload)
                if path == "/verify":
                    res = fac.verify(payload, requirements)
                    outcome = "valid" if res.is_valid else f"invalid:{res.invalid_reason}"
                else:
                    res = fac.settle(payload, requirements)
                    outcome = f"settled tx={res.transaction}" if res.success else f"failed:{res.error_reason}"
                payer = res.payer or payer
                self._send_json(200, res.model_dump(by_alias=True, exclude_none=True))
            except BadRequest as e:
                outcome = f"400 {e}"
                self._send_json(400, {"error": "invalid_request", "message": str(e)})
            except Exception as e:  # RPC down, SDK bug, ...
                outcome = f"500 {type(e).__name__}: {e}"
                self._send_json(500, {"error": "internal_error", "message": f"{type(e).__name__}: {e}"})
            ms = (time.monotonic() - t0) * 1000
            log(f"POST {path} payer={payer} result={outcome} {ms:.0f}ms")

    return Handler


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--rpc-url", required=True)
    ap.add_argument("--private-key", required=True, help="gas-paying signer (hex)")
    ap.add_argument("--network", action="append", required=True, help="CAIP-2 id; repeatable")
    ap.add_argument(
        "--confirmation-timeout", type=float, default=30.0, help="seconds settle waits for the receipt"
    )
    ap.add_argument(
        "--simulate-in-settle",
        action="store_true",
        help="re-simulate the transfer in /settle (SDK default: off, so a doomed settle is "
        "broadcast and reverts on chain, reported as transaction_failed)",
    )
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[facilitator] %(levelname)s %(name)s: %(message)s")
    fac = Facilitator(
        args.rpc_url, args.private_key, args.network, args.confirmation_timeout, args.simulate_in_settle
    )
    server = ThreadingHTTPServer((args.host, args.port), make_handler(fac))
    server.daemon_threads = True

    def stop(signum, frame):
        # shutdown() blocks until serve_forever returns, so call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(
        f"listening on http://{args.host}:{server.server_address[1]} networks={args.network} "
        f"signer={fac.signer.address} rpc={args.rpc_url}"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
