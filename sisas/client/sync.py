"""The client for scripts and notebooks: the same calls, without ``await``.

A :class:`SyncClient` runs its own event loop in a background thread, so it works where
a loop runs already (Jupyter) as well as in a plain script::

    with SyncClient.connect() as client:
        handle = client.start("clustering", {"points": [[0, 1], [2, 3]]}, seed=7)
        result = handle.result(timeout=60)
        print(result.status, client.output(handle.run_id, "cluster"))
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from sisas.bus.settings import Settings
from sisas.client.backfills import BackfillReport
from sisas.client.client import Client
from sisas.client.handle import RunHandle, RunResult
from sisas.pipeline import Pipeline
from sisas.signals import Signal

__all__ = ["SyncClient", "SyncRunHandle"]

T = TypeVar("T")


class _Loop:
    """An event loop in a daemon thread, running what it is handed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sisas-client")
        self._thread.daemon = True
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


class SyncRunHandle:
    """:class:`~sisas.client.handle.RunHandle` without ``await``."""

    def __init__(self, handle: RunHandle, loop: _Loop) -> None:
        self._handle = handle
        self._loop = loop
        self.run_id = handle.run_id

    def __repr__(self) -> str:
        return f"SyncRunHandle({self.run_id!r})"

    def result(self, timeout: float | None = None, *, check: bool = True) -> RunResult:
        return self._loop.run(self._handle.result(timeout, check=check))

    def status(self) -> str:
        return self._loop.run(self._handle.status())

    def cancel(self, reason: str = "cancelled by the client") -> bool:
        return self._loop.run(self._handle.cancel(reason))

    def output(self, phase: str) -> Any:
        return self._loop.run(self._handle.output(phase))

    def signals(self, *, follow: bool = True) -> Iterator[Signal]:
        """The run's signals (see :meth:`RunHandle.signals`), one at a time."""
        agen = self._handle.signals(follow=follow)
        try:
            while True:
                try:
                    yield self._loop.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(agen.aclose())


class SyncClient:
    """:class:`~sisas.client.client.Client` without ``await`` (see the module's docstring)."""

    def __init__(self, client: Client, loop: _Loop) -> None:
        self._client = client
        self._loop = loop
        self._closed = False

    @classmethod
    def connect(
        cls,
        settings: Settings | None = None,
        *,
        pipelines: Mapping[str, Pipeline] | Iterable[str] | None = None,
        name: str = "sisas-client",
        requested_by: str = "python client",
    ) -> SyncClient:
        """See :meth:`Client.connect`."""
        loop = _Loop()
        try:
            client = loop.run(
                Client.connect(settings, pipelines=pipelines, name=name, requested_by=requested_by)
            )
        except BaseException:
            loop.stop()
            raise
        sync = cls(client, loop)
        # A notebook or script that never closes it must not leave the embedded server
        # it started (or its services) running after Python exits.
        atexit.register(sync.close)
        return sync

    def close(self) -> None:
        """Close the client (and a server it started); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._loop.run(self._client.close(), timeout=30)
        finally:
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, pipeline: str, input: Any = None, **options: Any) -> SyncRunHandle:
        """See :meth:`Client.start` (the same keyword options)."""
        handle = self._loop.run(self._client.start(pipeline, input, **options))
        return SyncRunHandle(handle, self._loop)

    def handle(self, run_id: str) -> SyncRunHandle:
        return SyncRunHandle(self._client.handle(run_id), self._loop)

    def cancel(self, run_id: str, reason: str = "cancelled by the client") -> bool:
        return self._loop.run(self._client.cancel(run_id, reason))

    def output(self, run_id: str, phase: str, *, item: int | None = None) -> Any:
        return self._loop.run(self._client.output(run_id, phase, item=item))

    def output_bytes(self, run_id: str, phase: str, *, item: int | None = None) -> bytes:
        return self._loop.run(self._client.output_bytes(run_id, phase, item=item))

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        """See :meth:`Client.runs`."""
        return self._loop.run(self._client.runs(**filters))

    def backfill(self, pipeline: str, **options: Any) -> BackfillReport:
        """See :meth:`Client.backfill` (the same keyword options): one round of a
        backfill, returned once every partition's run has ended."""
        return self._loop.run(self._client.backfill(pipeline, **options))
