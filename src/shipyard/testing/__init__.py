"""Test and benchmark aids that stand in for third-party services (never for Shipyard parts)."""
