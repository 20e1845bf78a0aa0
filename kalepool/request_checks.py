"""Checks of request fields shared by every service: bad input is refused with one
clear sentence (INVALID_ARGUMENT) before anything is read or written."""

from __future__ import annotations

import uuid

from stellar_sdk import StrKey

from kalepool.bounds import show
from kalepool.grpc_server import InvalidArgument

IDEMPOTENCY_KEY_MAX = 200


def check_uuid(what: str, value: str) -> uuid.UUID:
    """A UUID in canonical form, or INVALID_ARGUMENT naming the field."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be a UUID, got {show(value)}") from None
    if str(parsed) != value.lower():
        raise InvalidArgument(f"{what} must be a UUID in canonical form, got {show(value)}")
    return parsed


def check_account(what: str, address: str) -> str:
    """A Stellar account address (G…) with a valid checksum."""
    if not StrKey.is_valid_ed25519_public_key(address):
        raise InvalidArgument(f"{what} must be a Stellar account address (G…), got {show(address)}")
    return address


def check_destination(what: str, address: str) -> str:
    """Where KALE may be sent: a G… or M… account or a C… contract, checksum included."""
    if not (
        StrKey.is_valid_ed25519_public_key(address)
        or StrKey.is_valid_med25519_public_key(address)
        or StrKey.is_valid_contract(address)
    ):
        raise InvalidArgument(f"{what} must be a Stellar G…, M… or C… address, got {show(address)}")
    return address


def check_idempotency_key(key: str) -> str:
    """A caller's idempotency key: 1 to 200 printable characters."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidArgument(
            f"idempotency_key must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters"
        )
    return key
