"""Deduplicated storage (docs/dedup.md): a dump stream cut into chunks, each compressed and
encrypted on its own and stored once under a keyed id. `layout` names where everything
lives, `keys` holds the dedup key and its copies, `writer` and `reader` store and read a
chunked backup, `gc` collects the chunks no backup names, `check` checks a storage."""
