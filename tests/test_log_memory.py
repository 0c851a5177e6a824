"""The log contract on the in-memory adapter."""

from __future__ import annotations

import pytest

from sisas.bus.memory_log import MemoryLog
from tests.log_contract import Inject, LogContract


@pytest.fixture
def memory_log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def log(memory_log: MemoryLog) -> MemoryLog:
    return memory_log


@pytest.fixture
def inject(memory_log: MemoryLog) -> Inject:
    async def put(subject: str, data: bytes) -> None:
        memory_log.inject_raw(subject, data)

    return put


class TestMemoryLog(LogContract):
    pass
