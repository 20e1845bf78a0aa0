"""wallet_service: see docs/architecture.md."""
