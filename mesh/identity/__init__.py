"""Security identities: labels → numbers, shared by every node, and IP → identity.

- labels.py     the security-label format, reserved identity numbers, label filters
- allocator.py  `IdentityAllocator` (the interface), `Identity`, `IdentityEvent`, `IdRange`
- sqlite.py     `SQLiteAllocator`: embedded store, one node (the default)
- etcd.py       `EtcdAllocator`: several nodes through etcd (leases, GC, watch)
- config.py     `IdentityConfig.from_agent_config(cfg)` and `open_allocator(...)`
- ipcache.py    `IPCache`: IP/CIDR → identity, longest-prefix match, change listeners
- api.py        agent API handlers (`routes(allocator, ipcache)`) for `ostium identity`

Nothing heavy is imported here: the CLI imports submodules it needs.
"""
