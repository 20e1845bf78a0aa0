"""Checks of request fields: bad input is refused with one clear sentence before
anything is read or written, and page tokens that cannot be forged into other queries."""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from typing import Any

from kalepool.bounds import PAGE_SIZE_MAX, STAKE_BPS_MAX
from kalepool.grpc_server import InvalidArgument
from kalepool.v1 import common_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = PAGE_SIZE_MAX
BPS_MAX = STAKE_BPS_MAX


def check_name(name: str) -> str:
    """A display name: 1 to 64 printable characters, surrounding spaces dropped."""
    stripped = name.strip()
    if not 1 <= len(stripped) <= 64 or not stripped.isprintable():
        raise InvalidArgument("name must be 1 to 64 printable characters")
    return stripped


def check_stake_bps(bps: int) -> int:
    if not 0 <= bps <= BPS_MAX:
        raise InvalidArgument(f"stake_bps must be 0 to {BPS_MAX} (0 % to 100 %), got {bps}")
    return bps


class Page:
    """A checked `Pagination`: how many rows, and the position after which to start.

    Tokens are base64 JSON of the last row's sort key plus a fingerprint of the filters,
    so a token used with other filters is refused instead of answering a wrong page.
    """

    def __init__(self, pagination: common_pb2.Pagination, *filters: object) -> None:
        size = pagination.page_size
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be at most {MAX_PAGE_SIZE}, got {size}")
        self.size = size or DEFAULT_PAGE_SIZE
        # An enum filter counts by its value, as the string it stands for would.
        plain = tuple(f.value if isinstance(f, enum.Enum) else f for f in filters)
        self._fingerprint = hashlib.sha256(repr(plain).encode()).hexdigest()[:16]
        self.after: list[Any] | None = None
        token = pagination.page_token
        if token:
            try:
                data = json.loads(base64.urlsafe_b64decode(token.encode()))
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise InvalidArgument("page_token is not a token this server issued") from None
            if not isinstance(data, dict) or not isinstance(data.get("k"), list):
                raise InvalidArgument("page_token is not a token this server issued")
            if data.get("f") != self._fingerprint:
                raise InvalidArgument("page_token was issued for other filters")
            self.after = data["k"]

    def next_token(self, rows: list[Any], key: list[Any]) -> str:
        """The token of the page after `rows` (fetched with size + 1): empty on the last page."""
        if len(rows) <= self.size:
            return ""
        body = json.dumps({"k": key, "f": self._fingerprint}, default=str)
        return base64.urlsafe_b64encode(body.encode()).decode()
