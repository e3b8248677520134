"""The `shipyard` command: one module per noun."""
