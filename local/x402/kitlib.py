"""Shared bits of the x402 peer kit (peers.py, pay.py): anvil dev keys and a JSON-RPC helper.

Stdlib only, so importing it is cheap.

Anvil's default dev accounts: these are the PUBLIC, well-known keys that anvil (and hardhat)
derive from the test mnemonic "test test test test test test test test test test test junk"
at m/44'/60'/0'/0/i. They hold value on no real chain; never use them outside a dev chain.

Roles in the peer kit:
    0      facilitator signer (pays gas, deploys and mints the token)
    1      pay_to (the resource server's receiving address; nothing minted)
    2..8   payers (peers.py --payers N uses 2..2+N-1)
    9      "broke" payer: never gets tokens (pay.py sign --variant broke-payer)
"""

import json
import urllib.request

ANVIL_DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
]

# Addresses of the keys above (checksummed), index-aligned.
ANVIL_DEV_ADDRESSES = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
]

FACILITATOR_INDEX = 0
PAY_TO_INDEX = 1
FIRST_PAYER_INDEX = 2
BROKE_PAYER_INDEX = 9
MAX_PAYERS = BROKE_PAYER_INDEX - FIRST_PAYER_INDEX  # 7: accounts 2..8


class RpcError(RuntimeError):
    """JSON-RPC error object returned by the node."""

    def __init__(self, method, error):
        self.method = method
        self.error = error
        super().__init__(f"{method}: {error.get('message', error)} (code {error.get('code')})")


def rpc(url, method, params=None, timeout=10.0):
    """One JSON-RPC 2.0 call over HTTP; returns `result` or raises RpcError / OSError."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if reply.get("error") is not None:
        raise RpcError(method, reply["error"])
    return reply.get("result")


def erc20_balance(rpc_url, token, holder):
    """balanceOf(holder) on an ERC-20, via eth_call (no web3 needed)."""
    data = "0x70a08231" + holder.lower().removeprefix("0x").rjust(64, "0")  # balanceOf(address)
    result = rpc(rpc_url, "eth_call", [{"to": token, "data": data}, "latest"])
    return int(result, 16) if result not in (None, "0x") else 0
