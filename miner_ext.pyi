"""KALE proof-of-work: the Keccak-256 nonce search.

The work hash is Keccak-256 (original padding) of the 76-byte preimage
``index (u32 BE) | nonce (u64 BE) | entropy (32 bytes) | farmer (32 raw key bytes)``;
its *zeros* are its leading zero hex nibbles.

Searches run on one process-wide pool of hashing threads (one per core by
default). Concurrent searches share the cores evenly, each with its own
bounds; the GIL is released while hashing, and Ctrl-C while waiting cancels.
Nonces are scanned from ``start_nonce`` (None: 0) upwards, wrapping from 2**64 - 1 to 0,
and no nonce is hashed twice. The best hash is the one with the most zeros;
on a tie, the one scanned first (the lowest nonce unless the range wraps).
"""

from collections.abc import Sequence
from types import TracebackType
from typing import Literal, final

__all__ = [
    "Search",
    "SearchResult",
    "__version__",
    "backends",
    "default_threads",
    "hash_prefixes",
    "kale_hash",
    "leading_zeros",
    "search",
    "search_many",
    "version",
    "wait_all",
]

__version__: str

# Why a search stopped (a name for the stub only: the module has no such object).
_StopReason = Literal["target", "max_hashes", "deadline", "cancelled", "exhausted"]

@final
class SearchResult:
    """The best hash of a search (final, or so far) and how many hashes were tried."""

    @property
    def nonce(self) -> int: ...
    @property
    def hash(self) -> bytes:
        """The 32-byte hash of ``nonce``."""

    @property
    def zeros(self) -> int:
        """Leading zero hex nibbles of ``hash``."""

    @property
    def hashes(self) -> int:
        """Hashes tried."""

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the end (or to now, while running)."""

    @property
    def reason(self) -> _StopReason | None:
        """Why the search stopped; None while it runs."""

    @property
    def done(self) -> bool: ...

@final
class Search:
    """A search started in the background on the shared pool.

    At least one bound is required: ``max_hashes`` (1..2**64), ``target_zeros``
    (0..64) or ``seconds`` (> 0); it stops at the first one reached.
    ``threads`` caps how many pool threads work on it at once (default: all;
    more than the core count adds pool threads for the life of the process).
    ``backend`` forces a kernel (see ``backends()``); by default the fastest.
    Dropping the handle, or leaving a ``with`` block, cancels the search.
    Handles do not survive ``fork()``: in the child, using one raises
    RuntimeError (new searches there work).

    Raises ValueError for entropy or farmer not 32 bytes, index outside u32,
    start_nonce outside u64, no bound, a bound out of range, threads < 1, or
    an unknown or unsupported backend; TypeError for arguments of the wrong type.
    """

    def __new__(
        cls,
        index: int,
        entropy: bytes | bytearray,
        farmer: bytes | bytearray,
        *,
        start_nonce: int | None = None,
        max_hashes: int | None = None,
        target_zeros: int | None = None,
        seconds: float | None = None,
        threads: int | None = None,
        backend: str | None = None,
    ) -> Search: ...
    def progress(self) -> SearchResult:
        """Best hash and hash count so far (``reason`` is None while running)."""

    def cancel(self) -> None:
        """Stop the search; it finishes within milliseconds."""

    def done(self) -> bool: ...
    def result(self, timeout: float | None = None) -> SearchResult:
        """Wait for the final result; TimeoutError if still running after ``timeout`` s."""

    @property
    def backend(self) -> str: ...
    def __enter__(self) -> Search: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

def kale_hash(
    index: int, nonce: int, entropy: bytes | bytearray, farmer: bytes | bytearray
) -> bytes:
    """Keccak-256 of the KALE preimage: the hash the farm contract's ``work`` checks."""

def leading_zeros(hash: bytes | bytearray) -> int:
    """Leading zero hex nibbles (a zero byte counts 2, a byte below 0x10 adds 1)."""

def search(
    index: int,
    entropy: bytes | bytearray,
    farmer: bytes | bytearray,
    *,
    start_nonce: int | None = None,
    max_hashes: int | None = None,
    target_zeros: int | None = None,
    seconds: float | None = None,
    threads: int | None = None,
    backend: str | None = None,
) -> SearchResult:
    """Search and block until a bound is reached (arguments as for ``Search``)."""

def search_many(
    assignments: Sequence[tuple[int, bytes | bytearray, bytes | bytearray]],
    *,
    start_nonce: int | None = None,
    max_hashes: int | None = None,
    target_zeros: int | None = None,
    seconds: float | Sequence[float] | None = None,
    threads: int | None = None,
    backend: str | None = None,
) -> list[SearchResult]:
    """Search several ``(index, entropy, farmer)`` assignments at once, sharing the cores.

    The bounds apply to each assignment; ``seconds`` may instead give each one
    its own deadline. Every assignment is checked before any search starts.
    """

def wait_all(searches: Sequence[Search], timeout: float | None = None) -> list[SearchResult]:
    """Wait for several searches; Ctrl-C cancels them all. TimeoutError after ``timeout`` s."""

def hash_prefixes(
    index: int,
    entropy: bytes | bytearray,
    farmer: bytes | bytearray,
    start_nonce: int,
    count: int,
    backend: str | None = None,
) -> list[bytes]:
    """First 8 bytes of the hash of ``count`` (<= 2**20) nonces, from one kernel's raw output."""

def backends() -> list[str]:
    """Kernels this CPU can run, slowest first; the last one is the default."""

def default_threads() -> int:
    """Hashing threads the shared pool starts with (one per usable core)."""

def version() -> str: ...
