"""The control-plane REST API, versioned under /api/v1, one module per resource."""

from shipyard.api.app import create_api

__all__ = ["create_api"]
