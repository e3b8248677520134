"""Shipyard: a self-hosted LLMOps platform behind one OpenAI-compatible gateway."""

from shipyard.config import Settings, load_settings
from shipyard.sdk.client import Client
from shipyard.sdk.tracing import observe

__version__ = "0.1.0"

__all__ = ["Client", "Settings", "__version__", "create_app", "load_settings", "observe"]


def create_app(settings: Settings):  # noqa: ANN201 - lazy import keeps `import shipyard` light
    """The whole server as an ASGI app (see shipyard.server.create_app)."""
    from shipyard.server import create_app as _create_app

    return _create_app(settings)
