"""Guardrails: scanners over requests and answers, and the per-deployment policies that act on them."""

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions, build_scanner, scanner_classes
from shipyard.guardrails.policy import GuardrailsConfig, GuardRule, Policy

__all__ = [
    "Finding",
    "GuardRule",
    "GuardrailsConfig",
    "Policy",
    "Scanner",
    "ScannerOptions",
    "build_scanner",
    "scanner_classes",
]
