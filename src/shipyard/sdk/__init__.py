"""Client-side helpers for applications that use Shipyard: the registry client and tracing."""

from shipyard.sdk.client import Client
from shipyard.sdk.tracing import configure, flush, http_client, observe, trace_headers

__all__ = ["Client", "configure", "flush", "http_client", "observe", "trace_headers"]
