"""Generated wire contracts, package kalepool.v1: regenerate with `make proto`, never edit.

The modules here come from proto/kalepool/v1/*.proto; tests fail when they are stale.
"""
