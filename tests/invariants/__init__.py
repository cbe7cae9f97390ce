"""The invariant harness (issue #23, docs/invariants.md): seeded random steps of backup,
prune, chunk GC, check, verify and restore against the real services, with faults, and
the invariants I1-I4 checked after every step."""
