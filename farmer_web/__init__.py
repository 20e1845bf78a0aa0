"""The farmers' web page: an HTTPS JSON API (and a small static page) in front of
PoolService, which it calls over mTLS as `farmer-web`, for the RPCs the pool admits it
to; a join, payout or leave only with the farmer's own signature, which the pool checks
(kalepool/farmer_actions.py). It never reaches the wallet or the database
(docs/farmers.md)."""
