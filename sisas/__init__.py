"""sisas: an event-sourced signal bus for auditable multi-phase pipelines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sisas")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
