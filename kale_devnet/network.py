"""The devnet's fixed identity: passphrase, well-known keys, the KALE asset and contract ids.

Everything here is derived from constant seeds, so every devnet (and every restart)
has the same ids. The keys are public knowledge and must never hold value anywhere
but this local chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

from stellar_sdk import Address, Asset, Keypair, Network, StrKey
from stellar_sdk import xdr as stellar_xdr

NETWORK_PASSPHRASE = "kale-pool devnet ; 2026"
PROTOCOL_VERSION = 23
ASSET_CODE = "KALE"

# A minimal, valid WebAssembly module (magic, version, one custom section) that stands in
# for the farm's code entry: the devnet runs the farm natively, and says so in the module.
_WASM_NOTE = b"KALE farm contract, run natively by the kale-pool devnet"
_WASM_SECTION_NAME = b"kale-pool-devnet"


def _custom_section(name: bytes, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name + payload
    return b"\x00" + bytes([len(body)]) + body


_WASM_HEADER = b"\x00asm\x01\x00\x00\x00"


def farm_wasm(version: int = 1) -> bytes:
    """The stand-in module of the farm's code, `version` 1 being the code deployed at
    genesis. Each later version is another module (another hash) running the same rules:
    what `Chain.upgrade_farm` uploads, as a homesteader's new release would be."""
    if not 1 <= version <= 9999:
        raise ValueError("a farm code version is from 1 to 9999")
    note = _WASM_NOTE if version == 1 else _WASM_NOTE + f" (version {version})".encode()
    return _WASM_HEADER + _custom_section(_WASM_SECTION_NAME, note)


def is_farm_wasm(code: bytes) -> bool:
    """Whether a code entry holds one of the farm's stand-in modules (any version)."""
    return code.startswith(_WASM_HEADER) and _WASM_SECTION_NAME + _WASM_NOTE in code


FARM_WASM = farm_wasm(1)


def _seeded_keypair(label: str) -> Keypair:
    return Keypair.from_raw_ed25519_seed(
        hashlib.sha256(f"kale-pool devnet {label}".encode()).digest()
    )


def contract_id_from_address(network_id: bytes, deployer: str, salt: bytes) -> str:
    """A contract id the way Stellar derives it: sha256 of the CONTRACT_ID preimage."""
    preimage = stellar_xdr.HashIDPreimage(
        type=stellar_xdr.EnvelopeType.ENVELOPE_TYPE_CONTRACT_ID,
        contract_id=stellar_xdr.HashIDPreimageContractID(
            network_id=stellar_xdr.Hash(network_id),
            contract_id_preimage=stellar_xdr.ContractIDPreimage(
                type=stellar_xdr.ContractIDPreimageType.CONTRACT_ID_PREIMAGE_FROM_ADDRESS,
                from_address=stellar_xdr.ContractIDPreimageFromAddress(
                    address=Address(deployer).to_xdr_sc_address(),
                    salt=stellar_xdr.Uint256(salt),
                ),
            ),
        ),
    )
    return StrKey.encode_contract(hashlib.sha256(preimage.to_xdr_bytes()).digest())


@dataclass(frozen=True, slots=True)
class DevnetIdentity:
    """The ids a client needs to talk to the devnet (public parts only)."""

    network_passphrase: str
    network_id: bytes
    homesteader: str
    friendbot: str
    asset_code: str
    asset_issuer: str
    sac_contract_id: str
    farm_contract_id: str
    farm_wasm_hash: bytes

    @property
    def asset(self) -> Asset:
        return Asset(self.asset_code, self.asset_issuer)


@cache
def homesteader_keypair() -> Keypair:
    """The farm's homesteader (admin), who is also the KALE issuer on the devnet."""
    return _seeded_keypair("homesteader")


@cache
def friendbot_keypair() -> Keypair:
    """The account friendbot pays from (the devnet's root account)."""
    return _seeded_keypair("friendbot")


FRIENDBOT_CHANNELS = 32


@cache
def friendbot_channel_keypair(index: int) -> Keypair:
    """Friendbot pays from channel accounts so it can fund many accounts per ledger."""
    return _seeded_keypair(f"friendbot channel {index}")


@cache
def identity() -> DevnetIdentity:
    """The devnet's ids, derived from the fixed seeds and the passphrase."""
    network_id = Network(NETWORK_PASSPHRASE).network_id()
    homesteader = homesteader_keypair().public_key
    asset = Asset(ASSET_CODE, homesteader)
    farm_salt = hashlib.sha256(b"kale-pool devnet farm").digest()
    return DevnetIdentity(
        network_passphrase=NETWORK_PASSPHRASE,
        network_id=network_id,
        homesteader=homesteader,
        friendbot=friendbot_keypair().public_key,
        asset_code=ASSET_CODE,
        asset_issuer=homesteader,
        sac_contract_id=asset.contract_id(NETWORK_PASSPHRASE),
        farm_contract_id=contract_id_from_address(network_id, homesteader, farm_salt),
        farm_wasm_hash=hashlib.sha256(FARM_WASM).digest(),
    )
