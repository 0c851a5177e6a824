"""The signal envelope: identity, position in its run's hash chain, and a typed body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import msgspec

from sisas.signals.kinds import Body

__all__ = ["GENESIS", "Signal", "signal_id"]

GENESIS: Final = "0" * 64
"""The ``prev`` of a run's first signal."""

Hex64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Signal(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """One immutable fact about a run.

    ``id`` is deterministic (run and seq), so appending the same decision twice is a
    no-op. ``prev`` is the ``hash`` of the run's previous signal (:data:`GENESIS` for
    the first) and ``hash`` is the sha256 of the canonical encoding of every other
    field but ``sig``: changing any byte of a signal, or reordering signals, breaks the chain.
    ``at`` is wall-clock time taken from the input that caused the signal, never read
    by the pure core.
    """

    id: str
    run_id: str
    pipeline: str
    seq: Annotated[int, msgspec.Meta(ge=1)]
    at: UtcTime
    prev: Hex64
    body: Body
    phase: str = ""
    attempt: Annotated[int, msgspec.Meta(ge=0)] = 0
    causation: str = ""
    hash: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")] = ""
    sig: str = ""
    """``<signer public nkey>.<ed25519 signature of hash>`` when signing is on (see
    :mod:`sisas.signals.signing`); like ``hash``, it is outside the hashed content."""

    @property
    def kind(self) -> str:
        """The body's tag, such as ``phase_completed``."""
        return self.body.__struct_config__.tag  # type: ignore[return-value]


def signal_id(run_id: str, seq: int) -> str:
    """The deterministic id of the ``seq``-th signal of ``run_id`` (also its Nats-Msg-Id)."""
    return f"{run_id}:{seq}"
