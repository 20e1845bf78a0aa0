"""Pooler bundles and provisioning, against the real pool and wallet servers (the pool
suite's stage: PostgreSQL, devnet, mutual TLS): registered once, found again on a rerun,
a lost API key rotated, and the bundle a mining machine needs written privately."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from stellar_sdk import Keypair

from kalepool.app.demo import DemoBook, provision_demo
from kalepool.app.files import read_env_file, write_env_file
from kalepool.app.funding import Friendbot
from kalepool.app.observer import RecordingObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import (
    PoolerBundle,
    PoolerSetupError,
    check_pooler_name,
    csr_instructions,
    issue_certificate,
    mining_settings,
    pooler_keygen,
    provision_pooler,
)
from kalepool.chain import read_account
from kalepool.settings import Settings
from kalepool.tls import DevPki, cert_matches_key, csr_matches_key, pem_fingerprint
from kalepool.v1 import pool_pb2, pooler_pb2
from pooler_agent.pool_client import PoolClient, PoolError
from tests.pool.conftest import PoolStage


def _settings(data: Path, **extra: object) -> Settings:
    return Settings(network="devnet", data_dir=data, _env_file=None, **extra)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["operator", "pool-service", "ca", "Rig 1", "", "a" * 41, "-x"])
def test_names_that_cannot_be_a_pooler(name: str) -> None:
    with pytest.raises(PoolerSetupError):
        check_pooler_name(name)
    assert check_pooler_name("rig-1") == "rig-1"


def test_env_files_are_private_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p" / "pooler.env"
    write_env_file(path, {"KALE_POOL_POOLER_API_KEY": "kp_x=y"}, header=["secret"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_env_file(path) == {"KALE_POOL_POOLER_API_KEY": "kp_x=y"}
    assert path.read_text().startswith("# secret\n")


def test_what_a_mining_machine_needs(tmp_path: Path) -> None:
    env = mining_settings(
        _settings(tmp_path),
        name="rig-1",
        pool_address="pool.example:50051",
        api_key="kp_abc",
        rpc_url="http://127.0.0.1:8000/",
        channel_secrets=["S1", "S2"],
    )
    assert env == {
        "KALE_POOL_NETWORK": "devnet",
        "KALE_POOL_RPC_URL": "http://127.0.0.1:8000/",
        "KALE_POOL_POOL_ADDRESS": "pool.example:50051",
        "KALE_POOL_POOLER_CERT_NAME": "rig-1",
        "KALE_POOL_POOLER_API_KEY": "kp_abc",
        "KALE_POOL_POOLER_CHANNEL_SECRETS": "S1,S2",
    }
    # The settings load as the agent loads them.
    fields = {k.removeprefix("KALE_POOL_").lower(): v for k, v in env.items()}
    loaded = Settings(_env_file=None, **fields)  # type: ignore[arg-type]
    assert loaded.pooler_cert_name == "rig-1" and loaded.pool_address == "pool.example:50051"


def test_the_certificate_key_lives_in_the_bundle_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pki = DevPki(settings.layout().certs)
    assert pki.ca_pem  # the CA, as `up` makes it
    bundle = PoolerBundle.of(settings, "rig-1")
    assert issue_certificate(settings, bundle) is True
    assert bundle.has_certificate()
    assert stat.S_IMODE(bundle.key.stat().st_mode) == 0o600
    # The CSR flow: the key made in the pooler's directory, only the request signed.
    assert csr_matches_key((bundle.certs / "rig-1.csr").read_bytes(), bundle.key.read_bytes())
    assert cert_matches_key(bundle.cert.read_bytes(), bundle.key.read_bytes())
    assert not (pki.directory / "rig-1-key.pem").exists()
    assert not (pki.directory / "rig-1.pem").exists()
    first = bundle.cert.read_bytes()
    assert issue_certificate(settings, bundle) is False  # once
    # A new key (rotation) gets a new certificate; the old one no longer matches it.
    assert issue_certificate(settings, bundle, new_key=True) is True
    assert bundle.cert.read_bytes() != first
    assert cert_matches_key(bundle.cert.read_bytes(), bundle.key.read_bytes())


def test_keygen_makes_the_key_once_and_a_csr_for_it(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    key, csr, made = pooler_keygen(certs, "rig-1")
    assert made and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert csr_matches_key(csr.read_bytes(), key.read_bytes())
    original = key.read_bytes()
    again_key, _, made = pooler_keygen(certs, "rig-1")
    assert not made and again_key.read_bytes() == original
    _, csr, made = pooler_keygen(certs, "rig-1", new_key=True)
    assert made and key.read_bytes() != original
    assert csr_matches_key(csr.read_bytes(), key.read_bytes())
    with pytest.raises(PoolerSetupError):
        pooler_keygen(certs, "operator")


def test_without_the_ca_key_the_csr_flow_is_needed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pki = DevPki(settings.layout().certs)
    assert pki.ca_pem
    (pki.directory / "ca-key.pem").unlink()  # the CA's key lives elsewhere (cert-manager)
    bundle = PoolerBundle.of(settings, "rig-1")
    with pytest.raises(PoolerSetupError, match="certificate request"):
        issue_certificate(settings, bundle)
    # The key and the request are made all the same: the request waits to be signed.
    assert bundle.key.is_file() and (bundle.certs / "rig-1.csr").is_file()
    assert not bundle.cert.exists()
    lines = csr_instructions("rig-1", "the-pooler-id")
    assert any("kale-pool pooler keygen rig-1" in line for line in lines)
    assert any("kale-pool pooler cert add the-pooler-id" in line for line in lines)


async def _accepted(pool: PoolStage, bundle: PoolerBundle, api_key: str) -> bool:
    """Whether PoolerService takes this bundle's certificate and API key."""
    from kalepool.tls import Identity

    assert pool.server is not None
    client = PoolClient(
        f"127.0.0.1:{pool.server.port}",
        Identity(bundle.cert.read_bytes(), bundle.key.read_bytes()),
        bundle.ca.read_bytes(),
        api_key,
        timeout=10,
        retry_attempts=0,
    )
    try:
        await client.heartbeat(pooler_pb2.HeartbeatRequest(agent_version="test", capacity=1))
    except PoolError:
        return False
    finally:
        await client.close()
    return True


def _data_dir(pool: PoolStage, tmp_path: Path) -> Path:
    """A data directory whose CA is the stage's (the pool trusts it)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "certs").symlink_to(pool.pki.directory)
    return data


async def test_provisioning_registers_once_and_rotates_a_lost_key(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    assert pool.server is not None
    settings = _settings(_data_dir(pool, tmp_path), rpc_url=pool.stage.server.url)
    address = f"127.0.0.1:{pool.server.port}"
    friendbot = Friendbot(pool.stage.server.url.rstrip("/") + "/friendbot", kale=True)
    kwargs = {
        "pool_address": address,
        "rpc_url": settings.rpc_url,
        "chain": pool.chain,
        "friendbot": friendbot,
        "channels": 2,
    }
    try:
        async with OperatorClient(settings, address=address) as op:
            first = await provision_pooler(op, settings, "rig-a", **kwargs)  # type: ignore[arg-type]
            assert first.registered and first.api_key_issued and first.funded == 2
            bundle = first.bundle
            assert stat.S_IMODE(bundle.env_file.stat().st_mode) == 0o600
            env = read_env_file(bundle.env_file)
            assert env["KALE_POOL_POOLER_API_KEY"] == first.api_key
            secrets = env["KALE_POOL_POOLER_CHANNEL_SECRETS"].split(",")
            assert Keypair.from_secret(secrets[0]).public_key == first.pooler.public_key
            for secret in secrets:
                assert await read_account(pool.chain, Keypair.from_secret(secret).public_key)
            assert await _accepted(pool, bundle, first.api_key)

            again = await provision_pooler(op, settings, "rig-a", **kwargs)  # type: ignore[arg-type]
            assert not again.registered and not again.api_key_issued and again.funded == 0
            assert again.pooler.pooler_id == first.pooler.pooler_id
            assert again.api_key == first.api_key

            # The record is lost but the keys are not: found again by its public key.
            bundle.record_file.unlink()
            found = await provision_pooler(op, settings, "rig-a", **kwargs)  # type: ignore[arg-type]
            assert found.pooler.pooler_id == first.pooler.pooler_id and not found.registered
            assert not found.api_key_issued and found.api_key == first.api_key

            # The settings file is lost: the same pooler, a new key, the old one revoked.
            bundle.env_file.unlink()
            rotated = await provision_pooler(op, settings, "rig-a", **kwargs)  # type: ignore[arg-type]
            assert rotated.pooler.pooler_id == first.pooler.pooler_id
            assert rotated.api_key_issued and rotated.api_key != first.api_key
            assert await _accepted(pool, bundle, rotated.api_key)
            assert not await _accepted(pool, bundle, first.api_key)

            # Its certificate revoked: refused at once; a rerun makes a new key and
            # certificate and registers it.
            revoked = pem_fingerprint(bundle.cert.read_bytes())
            await op.pool.RevokePoolerCertificate(
                pool_pb2.RevokePoolerCertificateRequest(
                    pooler_id=first.pooler.pooler_id, fingerprint=revoked
                )
            )
            assert not await _accepted(pool, bundle, rotated.api_key)
            healed = await provision_pooler(op, settings, "rig-a", **kwargs)  # type: ignore[arg-type]
            assert healed.pooler.pooler_id == first.pooler.pooler_id and healed.certificate
            assert pem_fingerprint(bundle.cert.read_bytes()) != revoked
            assert await _accepted(pool, bundle, rotated.api_key)
        assert await pool.count("poolers") == 1
    finally:
        await friendbot.close()


async def test_demo_farmers_are_funded_once_and_found_again(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    assert pool.server is not None
    settings = _settings(_data_dir(pool, tmp_path), rpc_url=pool.stage.server.url)
    address = f"127.0.0.1:{pool.server.port}"
    friendbot = Friendbot(pool.stage.server.url.rstrip("/") + "/friendbot", kale=True)
    observer = RecordingObserver()
    try:
        async with OperatorClient(settings, address=address) as op:
            rig = await provision_pooler(
                op,
                settings,
                "rig-b",
                pool_address=address,
                rpc_url=settings.rpc_url,
                chain=pool.chain,
                friendbot=friendbot,
                channels=1,
            )
            first = await provision_demo(op, settings, pool.chain, friendbot, [rig], 2, observer)
            assert [f.new for f in first] == [True, True]
            assert all(f.deposited > 0 for f in first)
            for f in first:
                state = await read_account(pool.chain, f.farmer.custodial_address)
                assert state is not None and state.kale is not None
                assert state.kale.balance == f.deposited
                payout = await read_account(pool.chain, f.entry.payout.public_key)
                assert payout is not None and payout.kale is not None  # trusts KALE
            book = DemoBook(settings)
            assert stat.S_IMODE(book.path.stat().st_mode) == 0o600
            again = await provision_demo(op, settings, pool.chain, friendbot, [rig], 2, observer)
            assert [f.farmer.farmer_id for f in again] == [f.farmer.farmer_id for f in first]
            assert [f.new for f in again] == [False, False]
            assert all(f.deposited == 0 for f in again)  # no second payment
        assert await pool.count("farmers") == 2
        assert await pool.count("custodial_wallets") == 2
    finally:
        await friendbot.close()
