"""pool_service: see docs/architecture.md."""
