"""The registry: prompts (templates, labels), datasets, models (versions, aliases, lineage) and the artifact store.

Modules: templates (the Jinja2 sandbox), prompts (push format, refs, rendering into requests), resolver (prompt
lookups for the gateway), artifacts (the fsspec store, safe names, safe archive unpacking), datasets, models,
gguf (conversion), runtime (the registry inside a running server). Tables live in shipyard.store.registry.
"""

__all__: list[str] = []
