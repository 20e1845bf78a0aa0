"""The pool's books: its SQL, one module per aggregate.

| module | what it holds (the tables it writes) |
| --- | --- |
| `poolers` | poolers, their API keys and last heartbeat (`poolers`, `pooler_api_keys`) |
| `farmers` | farmers: account, stake share, funding, status (`farmers`) |
| `plantings` | plant requests, their outcomes, the assignment feed's cursors, a block's |
| | plant stamps (`plant_requests`, `plantings`, `block_operations`) |
| `works` | reported works, verdicts observed on chain, a block's work stamp (`works`, |
| | `block_operations`) |
| `harvests` | worked pails still to harvest, harvest attempts (`harvests`) |
| `compensations` | what settled blocks owe farmers (`pooler_compensations`) |
| `payouts` | payouts and their ledger entries (`payouts`, `balance_ledger`) |
| `sweeps` | the pool's fee and share accounts, the sweeps of each harvest's fee and |
| | share, their entries (`accounts`, `sweeps`, `account_ledger`, `balance_ledger`) |
| `deposits` | the chain follower's position, deposits (`chain_cursors`, `deposits`) |
| `ledger` | a farmer's ledger entries and totals (none: entries come with their source) |
| `blocks` | block summaries, a block's events, the pool's figures (none) |
| `enums` | the enumerated values of their columns (faults: `kalepool.chain.Fault`) |

Each table is written by one module, which also holds its row type and column list;
other modules read its rows with them (a block's events, the chain follower's
questions). The database keeps the rules (one success per (farmer, block), append-only
events, derived balances): the stores do not check them again, and the services map its
refusals to statuses. A store's methods take a connection from the pool (autocommit; a transaction
where statements must hold together), or, as static methods, a connection the caller
holds, to run inside the caller's database transaction.

Rows are read one way: each query's rows are frozen dataclasses built by
`kalepool.db.reads` (psycopg's `class_row`, with a status, kind or fault column turned
into its enum member); a one-column answer (a count, an existence, a position) is read as
checked values (`fetch_value`, `fetch_values`). Dataclasses rather than `dict_row` and
`TypedDict`: the rows are what the services pass around, so fields read as the domain
(`row.status`), mypy checks each access, and a row can carry a default or a method (a
plant request's age); frozen, because a row read is a fact — the event tables are
append-only, and a change is a new row written through its store.
"""
