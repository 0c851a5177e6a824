"""I/O: the NATS JetStream adapter, the embedded nats-server, the object store, settings,
and the wiring that puts them together (:func:`open_bus`)."""

from sisas.bus.artifacts import ArtifactStore, JetStreamArtifacts, MemoryArtifacts, bytes_digest
from sisas.bus.embedded import EmbeddedServer, RunningServer, running_server
from sisas.bus.jetstream_log import JetStreamLog
from sisas.bus.log import AppendResult, SignalLog
from sisas.bus.memory import memory_ports
from sisas.bus.memory_log import MemoryLog
from sisas.bus.ports import Ports
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.signals.names import ARTIFACT_BUCKET, INPUT_STREAM, LOG_STREAM

__all__ = [
    "ARTIFACT_BUCKET",
    "INPUT_STREAM",
    "LOG_STREAM",
    "AppendResult",
    "ArtifactStore",
    "Bus",
    "EmbeddedServer",
    "JetStreamArtifacts",
    "JetStreamLog",
    "MemoryArtifacts",
    "MemoryLog",
    "Ports",
    "RunningServer",
    "Settings",
    "SignalLog",
    "bytes_digest",
    "memory_ports",
    "open_bus",
    "running_server",
]
