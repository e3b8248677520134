"""The data plane: OpenAI routes, routing, retries, relay, call records."""
