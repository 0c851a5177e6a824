"""The one place NATS errors become sisas errors (as httpx's ``map_exceptions`` does).

Every adapter wraps its calls to nats-py in :func:`nats_errors`: whatever nats-py (or
the socket under it) raises leaves ``bus/`` as a :class:`~sisas.errors.BusError` whose
message says what was being done and what to check; sisas's own errors pass through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sisas.errors import BusError, SisasError

__all__ = ["nats_errors"]


@contextlib.contextmanager
def nats_errors(doing: str, fix: str = "is the server reachable?") -> Iterator[None]:
    """Raise :class:`BusError` ``"could not <doing> (<error>): <fix>"`` for any error
    but a :class:`SisasError` raised inside the block. Catch the nats-py errors that
    mean something to the caller (a key not found) inside the block, before this."""
    try:
        yield
    except SisasError:
        raise
    except Exception as exc:  # nats-py raises many unrelated types: none leaves bus/
        raise BusError(f"could not {doing} ({exc or type(exc).__name__}): {fix}") from None
