"""The ports the services run on, each with a JetStream adapter and an in-memory twin.

A service (orchestrator, worker) is a loop of *consume -> pure call -> append -> ack*.
What it consumes from and writes to is named here by role, not by NATS API, so the
same service code runs against a real server (:func:`sisas.bus.runtime.open_bus`) and
in one process with no server at all (:func:`sisas.bus.memory.memory_ports`), where the
fast tests drive it:

- :class:`~sisas.bus.log.SignalLog`: the record (commits, fenced per run);
- :class:`Inputs`: commands and reports, taken by the orchestrators' shared consumer;
- :class:`Work`: scheduled attempts offered to the workers of a pipeline;
- :class:`Plans` and :class:`Circuits`: what orchestrators read while deciding;
- :class:`~sisas.bus.artifacts.ArtifactStore`: outputs by digest;
- :class:`Wire`: what is not durable (presence answers, progress, commit notices).

A message taken from :class:`Inputs` or :class:`Work` is a :class:`Delivery`: it stays
owned by its taker until acknowledged (``ack``), handed back (``nak``), given up
(``term``), or until ``ack_wait`` passes without ``in_progress``; then it is delivered
again. nats-py's ``Msg`` is one as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sisas.bus.artifacts import ArtifactStore
from sisas.bus.log import SignalLog
from sisas.bus.settings import Settings
from sisas.handlers.circuit import Circuit
from sisas.signals.inputs import Input
from sisas.signals.plan import PipelinePlan
from sisas.signals.records import StoredSignal

__all__ = [
    "Circuits",
    "Delivery",
    "Feed",
    "Inputs",
    "Plans",
    "Ports",
    "Published",
    "Sequence",
    "Wire",
    "Work",
]


class Published(NamedTuple):
    """Where an input was stored; ``duplicate``: an input with its id was stored already
    (within the stream's duplicate window), so this one was not, and ``seq`` is that one's."""

    seq: int
    duplicate: bool


class SequencePair(Protocol):
    @property
    def stream(self) -> int: ...


class Sequence(Protocol):
    """What a delivery says of its place: ``sequence.stream`` and ``num_delivered``."""

    @property
    def sequence(self) -> SequencePair: ...

    @property
    def num_delivered(self) -> int: ...


class Delivery(Protocol):
    """A message taken from a queue, owned by its taker until settled."""

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...

    @property
    def metadata(self) -> Sequence: ...

    async def ack(self) -> None:
        """Done: never delivered again."""

    async def nak(self, delay: float | None = None) -> None:
        """Not now: deliver it again (after ``delay`` seconds)."""

    async def term(self) -> None:
        """Never: not delivered again, not done (a poison message, recorded elsewhere)."""

    async def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait``."""


class Feed(Protocol):
    """One durable consumer's deliveries."""

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to ``batch`` deliveries; raises ``TimeoutError`` when none came in ``timeout``."""
        ...

    async def close(self) -> None: ...


class Inputs(Protocol):
    """Commands and reports on their way to the orchestrators (``SISAS_IN``)."""

    async def publish(self, inp: Input, *, subject: str = "") -> Published:
        """Store ``inp`` (deduplicated by its id), carrying the current trace context;
        on ``subject`` when given (a request awaiting admission), else its input subject."""
        ...

    async def consume(self, durable: str, *, ack_wait: float) -> Feed:
        """The inputs, in stream order, for the consumer ``durable`` (shared by its takers)."""
        ...

    async def record_rejection(self, seq: int, subject: str, reason: str, size: int) -> None:
        """Keep, beside the inputs, why the input at ``seq`` was refused (once per seq)."""
        ...

    async def stored(self, seq: int) -> Input | None:
        """The input stored at ``seq`` (None when gone or not an input)."""
        ...


class Work(Protocol):
    """Scheduled attempts offered to workers, apart from the record (``SISAS_WORK``)."""

    async def offer(self, scheduled: Iterable[StoredSignal]) -> int:
        """Offer each scheduled signal, already durable in the log; how many were new."""
        ...

    async def consume(self, pipeline: str, *, ack_wait: float) -> Feed:
        """The offers of ``pipeline``, each taken by one of the pipeline's workers."""
        ...


class Plans(Protocol):
    """Pipeline plans by name (``sisas-pipelines``)."""

    async def publish(self, plan: PipelinePlan) -> None: ...

    async def get(self, name: str) -> PipelinePlan | None: ...

    async def names(self) -> list[str]: ...

    def listen(self) -> None:
        """Keep the plans read while they stay current (a reader of many, such as an
        orchestrator); without it every :meth:`get` reads the bucket."""
        ...


class Circuits(Protocol):
    """Circuit breakers by pipeline and phase, shared by every orchestrator."""

    async def get(self, pipeline: str) -> dict[str, Circuit]: ...

    async def store(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        """Record the changed circuits (merged with what another orchestrator wrote)."""
        ...

    def note(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        """Let the next :meth:`get` here see ``changed`` at once, before it is stored."""
        ...


class Wire(Protocol):
    """What is sent and not kept: presence answers, progress, commit notices."""

    @property
    def max_payload(self) -> int:
        """The most bytes one message may hold."""
        ...

    def answering(
        self,
        subjects: Iterable[str],
        about: Mapping[str, object] | Callable[[], Mapping[str, object]],
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Answer presence requests on ``subjects`` with ``about`` while inside."""
        ...

    async def publish(self, subject: str, payload: bytes) -> None:
        """Send ``payload`` to whoever listens now (progress on a run's live subject)."""
        ...

    async def answered(self, subject: str, *, timeout: float) -> bool:
        """Whether anyone answers on ``subject`` now (:mod:`sisas.bus.presence`)."""
        ...

    async def answers(self, subject: str, *, quiet: float, timeout: float) -> list[dict[str, Any]]:
        """What everyone answering on ``subject`` says, gathered until ``quiet``."""
        ...

    def on_commits(
        self, callback: Callable[[str, bytes], None]
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Call ``callback(subject, data)`` for every commit appended while inside (best
        effort: a refused or lost notice only means an attempt runs to its end). A plain
        function, called as the notice is read: it must be quick and must not raise."""
        ...


@dataclass
class Ports:
    """Everything a service needs, by role: see the module's docstring."""

    settings: Settings
    log: SignalLog
    artifacts: ArtifactStore
    inputs: Inputs
    work: Work
    plans: Plans
    circuits: Circuits
    wire: Wire

    @property
    def server_version(self) -> str:
        """The version of the server behind the ports ("" with none)."""
        return ""


def closing_feed(feed: Feed) -> contextlib.AbstractAsyncContextManager[Feed]:
    """``async with closing_feed(await inputs.consume(...)) as feed``."""

    @contextlib.asynccontextmanager
    async def scope() -> AsyncIterator[Feed]:
        try:
            yield feed
        finally:
            with contextlib.suppress(Exception):  # the connection may be closing
                await feed.close()

    return scope()
