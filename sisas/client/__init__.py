"""What a program does with a sisas bus: start runs, follow and cancel them, read their
outputs, ask the query service; verify and rerun runs from the log.

``Client`` is async; ``SyncClient`` is the same for scripts and notebooks.
"""

from sisas.client.client import Client, Started
from sisas.client.handle import RunHandle, RunResult
from sisas.client.sync import SyncClient, SyncRunHandle

__all__ = ["Client", "RunHandle", "RunResult", "Started", "SyncClient", "SyncRunHandle"]
