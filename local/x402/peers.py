#!/usr/bin/env python3
"""Chain side of the x402 test harness: anvil + test token + x402 facilitator.

    peers.py up --info-file FILE [--state-dir DIR] [--payers N]

Starts, on free loopback ports: the anvil binary (chain id 31337), deploys Token.sol (TUSD,
6 decimals, EIP-3009) from dev account 0, mints 1,000,000 TUSD to each payer (accounts 2..),
places a Multicall3-compatible contract at the canonical address, starts facilitator.py, then
writes FILE (JSON, atomically) and stays in the foreground until SIGTERM/SIGINT, when it stops
the facilitator and anvil and exits 0. A stale FILE is deleted at start and FILE is deleted
again on shutdown, so "FILE exists" means "peers are up".

Run with the kit's venv python (scripts/x402-setup prints its path). Progress goes to stderr; anvil's
own output goes to DIR/anvil.<pid>.log (deleted after a clean shutdown).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kitlib import (
    ANVIL_DEV_ADDRESSES,
    ANVIL_DEV_KEYS,
    FACILITATOR_INDEX,
    FIRST_PAYER_INDEX,
    MAX_PAYERS,
    PAY_TO_INDEX,
    rpc,
)

KIT_DIR = Path(__file__).resolve().parent
NODE_MODULES = KIT_DIR / "node_modules"
CHAIN_ID = 31337
NETWORK = f"eip155:{CHAIN_ID}"
MINT_PER_PAYER = 1_000_000 * 10**6
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
SOURCES = ("Token.sol", "Multicall3.sol")
SOLC_SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    # Pinned so the bytecode does not depend on solc's default; anvil runs the latest fork.
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

T0 = time.monotonic()


def log(msg: str) -> None:
    sys.stderr.write(f"[peers +{time.monotonic() - T0:6.2f}s] {msg}\n")
    sys.stderr.flush()


class Shutdown(BaseException):
    """Raised from the SIGTERM/SIGINT handler."""


class StartupError(Exception):
    pass


# ------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if peers.py dies without cleaning up (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        cmd,
        # own session: a Ctrl-C in the terminal reaches peers.py only, which then stops
        # the children in order.
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        **kw,
    )


def stop_process(name: str, proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM; killing")
        proc.kill()
        proc.wait(5)
    log(f"stopped {name} (pid {proc.pid}, exit {proc.returncode})")


def anvil_binary() -> Path:
    os_name = {"linux": "linux", "darwin": "darwin"}.get(sys.platform.rstrip("0123456789"))
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    path = NODE_MODULES / "@foundry-rs" / f"anvil-{os_name}-{arch}" / "bin" / "anvil"
    if not path.is_file():
        raise StartupError(f"anvil binary not found at {path}; run scripts/x402-setup first")
    return path


def wait_until(what: str, check, timeout: float, proc: subprocess.Popen | None = None, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"{what}: process exited with code {proc.returncode}")
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # not up yet
            last_err = e
        time.sleep(interval)
    raise StartupError(f"{what}: not ready after {timeout:.0f}s (last error: {last_err})")


# ---------------------------------------------------------------------- compile
def solc_input() -> dict:
    return {
        "language": "Solidity",
        "sources": {name: {"content": (KIT_DIR / name).read_text()} for name in SOURCES},
        "settings": SOLC_SETTINGS,
    }


def solc_cache_path(state_dir: Path, std_input: dict) -> Path:
    solc_version = json.loads((NODE_MODULES / "solc" / "package.json").read_text())["version"]
    key = hashlib.sha256((solc_version + "\n" + json.dumps(std_input, sort_keys=True)).encode()).hexdigest()
    return state_dir / f"solc-{key[:24]}.json"


class Compile:
    """Token.sol + Multicall3.sol via solcjs, cached by a hash of the compiler input.

    start() launches solcjs in the background (no threads: its input fits in the pipe
    buffer, and its output waits in the pipe until result() reads it).
    """

    def __init__(self, state_dir: Path):
        self.std_input = solc_input()
        self.cache = solc_cache_path(state_dir, self.std_input)
        self.proc: subprocess.Popen | None = None
        self.artifacts: dict | None = None

    def start(self) -> None:
        if self.cache.is_file():
            try:
                self.artifacts = json.loads(self.cache.read_text())
                return
            except json.JSONDecodeError:
                pass
        solc_js = NODE_MODULES / "solc" / "solc.js"
        if not solc_js.is_file():
            raise StartupError(f"solcjs not found at {solc_js}; run scripts/x402-setup first")
        self.proc = spawn(["node", str(solc_js), "--standard-json"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.proc.stdin.write(json.dumps(self.std_input).encode())
        self.proc.stdin.close()
        self.proc.stdin = None

    def result(self) -> tuple[dict, bool]:
        if self.artifacts is not None:
            return self.artifacts, True
        stdout, stderr = self.proc.communicate(timeout=120)
        out = stdout.decode()
        # solcjs may print a ">>> Cannot retry compilation with SMT ..." line before the JSON.
        start = out.find("{")
        if self.proc.returncode != 0 or start < 0:
            raise StartupError(f"solcjs failed (exit {self.proc.returncode}): {stderr.decode()[-2000:]} {out[:2000]}")
        output = json.loads(out[start:])
        errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
        if errors:
            raise StartupError("solc errors:\n" + "\n".join(e.get("formattedMessage", str(e)) for e in errors))
        for e in output.get("errors", []):
            log(f"solc {e.get('severity')}: {e.get('formattedMessage', '').strip()}")
        artifacts = {}
        for contracts in output["contracts"].values():
            for cname, c in contracts.items():
                artifacts[cname] = {
                    "abi": c["abi"],
                    "bytecode": "0x" + c["evm"]["bytecode"]["object"],
                    "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
                }
        tmp = self.cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(artifacts))
        tmp.replace(self.cache)
        self.artifacts = artifacts
        return artifacts, False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ chain
def send_tx(rpc_url: str, tx: dict) -> dict:
    """eth_sendTransaction from an unlocked anvil dev account; returns the mined receipt."""
    tx_hash = rpc(rpc_url, "eth_sendTransaction", [tx])
    receipt = wait_until(
        f"receipt {tx_hash}",
        lambda: rpc(rpc_url, "eth_getTransactionReceipt", [tx_hash]),
        timeout=30,
        interval=0.02,
    )
    if int(receipt["status"], 16) != 1:
        raise StartupError(f"transaction {tx_hash} reverted: {tx}")
    return receipt


def encode_call(signature: str, types: list[str], values: list) -> str:
    from eth_abi import encode
    from eth_utils import keccak

    return "0x" + (keccak(text=signature)[:4] + encode(types, values)).hex()


# ------------------------------------------------------------------------- main
def cmd_up(args) -> int:
    from eth_utils import to_checksum_address

    info_file = Path(args.info_file).resolve()
    state_dir = Path(args.state_dir).resolve() if args.state_dir else KIT_DIR / ".cache"
    state_dir.mkdir(parents=True, exist_ok=True)
    if not 1 <= args.payers <= MAX_PAYERS:
        raise StartupError(f"--payers must be 1..{MAX_PAYERS} (accounts 2..8; account 9 stays broke)")
    info_file.unlink(missing_ok=True)  # never let a reader see a previous run's ports

    anvil = facilitator = None
    anvil_log = anvil_log_path = None
    clean_exit = False
    compile_ = Compile(state_dir)
    try:
        # 0. solcjs runs in the background while anvil starts (cache hit: nothing to run)
        t_compile = time.monotonic()
        compile_.start()

        # 1. anvil (retry on the rare port race)
        binary = anvil_binary()
        anvil_log_path = state_dir / f"anvil.{os.getpid()}.log"  # kept only if something fails
        anvil_log = open(anvil_log_path, "wb")
        for attempt in range(3):
            t = time.monotonic()
            port = free_port()
            rpc_url = f"http://127.0.0.1:{port}"
            anvil = spawn(
                [str(binary), "--chain-id", str(CHAIN_ID), "--host", "127.0.0.1", "--port", str(port)],
                stdout=anvil_log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until(
                    "anvil", lambda: int(rpc(rpc_url, "eth_chainId", timeout=1), 16) == CHAIN_ID, 20, anvil
                )
                break
            except StartupError as e:
                stop_process("anvil", anvil)
                if attempt == 2:
                    raise StartupError(f"{e} (see {anvil_log_path})") from None
                log(f"anvil start failed ({e}); retrying on another port")
        log(f"anvil up at {rpc_url} (pid {anvil.pid}) in {time.monotonic() - t:.2f}s")
        accounts = [a.lower() for a in rpc(rpc_url, "eth_accounts")]
        if ANVIL_DEV_ADDRESSES[FACILITATOR_INDEX].lower() not in accounts:
            raise StartupError("anvil does not expose (unlocked) dev account 0; unexpected anvil config")

        # 2. facilitator: start now (its imports take ~1-2 s), check readiness at the end
        fac_port = free_port()
        facilitator_url = f"http://127.0.0.1:{fac_port}"
        t_fac = time.monotonic()
        facilitator = spawn(
            [
                sys.executable,
                str(KIT_DIR / "facilitator.py"),
                "--port", str(fac_port),
                "--rpc-url", rpc_url,
                "--private-key", ANVIL_DEV_KEYS[FACILITATOR_INDEX],
                "--network", NETWORK,
            ] + (["--simulate-in-settle"] if args.simulate_in_settle else []),
            stdout=subprocess.DEVNULL,
        )

        # 3. compile result (cached by input hash)
        artifacts, cached = compile_.result()
        log(f"contracts compiled {time.monotonic() - t_compile:.2f}s after start ({'cache hit' if cached else 'solcjs'})")

        # 4. deploy the token from account 0, mint to payers
        t = time.monotonic()
        deployer = ANVIL_DEV_ADDRESSES[FACILITATOR_INDEX]
        receipt = send_tx(rpc_url, {"from": deployer, "data": artifacts["Token"]["bytecode"], "gas": hex(3_000_000)})
        token = to_checksum_address(receipt["contractAddress"])
        log(f"Token deployed at {token} in {time.monotonic() - t:.2f}s")

        t = time.monotonic()
        payer_idx = list(range(FIRST_PAYER_INDEX, FIRST_PAYER_INDEX + args.payers))
        hashes = []
        for i in payer_idx:
            data = encode_call("mint(address,uint256)", ["address", "uint256"], [ANVIL_DEV_ADDRESSES[i], MINT_PER_PAYER])
            hashes.append(rpc(rpc_url, "eth_sendTransaction", [{"from": deployer, "to": token, "data": data}]))
        for h in hashes:
            r = wait_until(f"receipt {h}", lambda h=h: rpc(rpc_url, "eth_getTransactionReceipt", [h]), 30, interval=0.02)
            if int(r["status"], 16) != 1:
                raise StartupError(f"mint transaction {h} reverted")
        log(f"minted {MINT_PER_PAYER} to {len(payer_idx)} payer(s) in {time.monotonic() - t:.2f}s")

        # 5. Multicall3 at its canonical address (own minimal implementation)
        rpc(rpc_url, "anvil_setCode", [MULTICALL3_ADDRESS, artifacts["Multicall3"]["deployedBytecode"]])
        probe = rpc(rpc_url, "eth_call", [{"to": MULTICALL3_ADDRESS, "data": encode_call("getChainId()", [], [])}, "latest"])
        if int(probe, 16) != CHAIN_ID:
            raise StartupError("Multicall3 probe failed")
        log(f"Multicall3 placed at {MULTICALL3_ADDRESS}")

        # 6. facilitator readiness
        def supported():
            with urllib.request.urlopen(f"{facilitator_url}/supported", timeout=2) as r:
                kinds = json.loads(r.read())["kinds"]
                return any(k["network"] == NETWORK and k["scheme"] == "exact" for k in kinds)

        wait_until("facilitator", supported, 30, facilitator)
        log(f"facilitator up at {facilitator_url} (pid {facilitator.pid}), {time.monotonic() - t_fac:.2f}s after spawn")

        # 7. info file
        info = {
            "rpc_url": rpc_url,
            "chain_id": CHAIN_ID,
            "network": NETWORK,
            "asset": token,
            "asset_name": "TokenOps Test Dollar",
            "asset_version": "1",
            "asset_symbol": "TUSD",
            "decimals": 6,
            "pay_to": ANVIL_DEV_ADDRESSES[PAY_TO_INDEX],
            "payers": [{"address": ANVIL_DEV_ADDRESSES[i], "private_key": ANVIL_DEV_KEYS[i]} for i in payer_idx],
            "payer_balance": str(MINT_PER_PAYER),
            "facilitator_url": facilitator_url,
            "facilitator_signer": ANVIL_DEV_ADDRESSES[FACILITATOR_INDEX],
            "multicall3": MULTICALL3_ADDRESS,
            "anvil_pid": anvil.pid,
            "facilitator_pid": facilitator.pid,
            "peers_pid": os.getpid(),
            "python": sys.executable,
            "pay_script": str(KIT_DIR / "pay.py"),
            "state_dir": str(state_dir),
            "anvil_log": str(anvil_log_path),
        }
        # sanity: read back the token's metadata so the info file cannot disagree with the chain
        from eth_abi import decode

        name = decode(["string"], bytes.fromhex(rpc(rpc_url, "eth_call", [{"to": token, "data": encode_call("name()", [], [])}, "latest"])[2:]))[0]
        version = decode(["string"], bytes.fromhex(rpc(rpc_url, "eth_call", [{"to": token, "data": encode_call("version()", [], [])}, "latest"])[2:]))[0]
        if (name, version) != (info["asset_name"], info["asset_version"]):
            raise StartupError(f"token metadata mismatch: {name!r} {version!r}")

        info_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = info_file.with_name(f".{info_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(info_file)
        log(f"ready in {time.monotonic() - T0:.2f}s; info written to {info_file}")

        # 8. stay up until signalled; a dying child takes the whole kit down
        while True:
            for name_, proc in (("anvil", anvil), ("facilitator", facilitator)):
                if proc.poll() is not None:
                    log(f"{name_} (pid {proc.pid}) exited unexpectedly with code {proc.returncode}")
                    return 1
            time.sleep(0.5)
    except Shutdown:
        log("signal received; shutting down")
        clean_exit = True
        return 0
    finally:
        # The handler may fire again while we clean up; ignore further signals.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        compile_.stop()
        stop_process("facilitator", facilitator)
        stop_process("anvil", anvil)
        if anvil_log is not None:
            anvil_log.close()
            if clean_exit:
                anvil_log_path.unlink(missing_ok=True)
            else:
                log(f"anvil output kept in {anvil_log_path}")
        info_file.unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="x402 peer kit: local chain, token and facilitator")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start everything and stay in the foreground")
    up.add_argument("--info-file", required=True, help="JSON file written (atomically) once all is up")
    up.add_argument("--state-dir", help="compile cache + anvil log (default: local/x402/.cache)")
    up.add_argument("--payers", type=int, default=3, help=f"funded payer accounts, 1..{MAX_PAYERS} (default 3)")
    up.add_argument(
        "--simulate-in-settle",
        action="store_true",
        help="facilitator re-simulates in /settle (SDK default off: doomed settles are broadcast)",
    )
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise Shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return cmd_up(args)
    except StartupError as e:
        log(f"ERROR: {e}")
        return 1
    except Shutdown:
        return 0


if __name__ == "__main__":
    sys.exit(main())
