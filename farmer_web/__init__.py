"""The farmers' web page: an HTTPS JSON API (and a small static page) in front of
PoolService, which it calls over mTLS as `farmer-web`, for the few read RPCs the pool
admits it to. It never reaches the wallet or the database (docs/farmers.md)."""
