"""pooler_agent: see docs/architecture.md."""
