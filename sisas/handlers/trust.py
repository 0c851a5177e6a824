"""Whether a worker may act on a ``phase_scheduled`` signal: its signature.

A worker given trusted keys (``SISAS_TRUSTED_KEYS``) executes only the work an
orchestrator holding one of those signing keys scheduled. Server permissions already
keep every role but the orchestrator from appending to the log; this closes what is left:
a signal appended with stolen orchestrator NATS credentials, but without the signing key,
is not executed. Pure: the decision depends on the signal and the keys alone.
"""

from __future__ import annotations

import msgspec

from sisas.signals.envelope import Signal
from sisas.signals.kinds import PhaseScheduled
from sisas.signals.signing import SignatureCheck, check_signature

__all__ = ["refusal"]


def refusal(signal: Signal, trusted: frozenset[str]) -> SignatureCheck | None:
    """None when a worker trusting ``trusted`` may execute ``signal`` (always when
    ``trusted`` is empty: nothing is required); else the failed check (status
    ``unsigned``, ``invalid`` or ``untrusted``) whose ``message`` says what was wrong
    and what to do, for the worker's log and the attempt's error."""
    if not trusted:
        return None
    check = check_signature(signal, trusted)
    if check.status == "valid":
        return None
    item = signal.body.item if isinstance(signal.body, PhaseScheduled) else None
    where = f"phase {signal.phase}, attempt {signal.attempt}"
    what = f"{signal.kind} {signal.id} ({where}{'' if item is None else f', item {item}'})"
    verify = f"`sisas replay verify {signal.run_id}`"
    if check.status == "unsigned":
        message = (
            f"{what} carries no signature, and this worker runs only work signed by a key "
            "in SISAS_TRUSTED_KEYS: it was appended by something that does not hold the "
            "signing key. If your orchestrators do not sign yet, give them SISAS_SIGNING_KEY "
            f"(orchestrator.env of `sisas security init`); otherwise check the log with {verify}"
        )
    elif check.status == "invalid":
        message = (
            f"{what} carries a signature that does not verify ({check.message}): the signal "
            f"was forged or altered after signing; check the log with {verify}"
        )
    else:
        message = (
            f"{what} is signed by {check.signer}, which is not in SISAS_TRUSTED_KEYS: if "
            "that is your orchestrator's key, add it to the workers' SISAS_TRUSTED_KEYS "
            "(`sisas keys public signing.nk` prints it); otherwise find who signs with it "
            f"and check the log with {verify}"
        )
    return msgspec.structs.replace(check, message=message)
