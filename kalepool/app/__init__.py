"""The application: the command line's commands and the local stack `kale-pool up` runs.

This package is the composition root: it is the one place that knows every part
(the services, the pooler agent, the devnet) and wires them together. The shared
core (`kalepool` outside this package) and the services never import it.
"""
