"""The devnet as the composition root sees it: an optional extra.

`kale_devnet` (a development chain) installs with `pip install 'kale-pool[devnet]'` and is
left out of the service image, so the commands that run it (`kale-pool devnet`, `up` and
`check` on the devnet) call `require_devnet()` before importing it: a missing extra is one
line naming what to install, not an ImportError's traceback.
"""

from __future__ import annotations

import importlib

INSTALL_HINT = "pip install 'kale-pool[devnet]'"


class DevnetMissingError(Exception):
    """The devnet extra is not installed; the message says how to install it."""


def require_devnet() -> None:
    """Import `kale_devnet` (and so what it needs), or raise `DevnetMissingError`."""
    try:
        importlib.import_module("kale_devnet")
    except ModuleNotFoundError as error:
        # The package itself, or one of the extra's dependencies (nacl), is absent.
        raise DevnetMissingError(
            f"the local devnet is not installed here (no module {error.name!r}): {INSTALL_HINT}"
        ) from None
