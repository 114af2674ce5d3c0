"""Shared test support: protecting files as other tools do, evmctl, xattr probes, polling with a
deadline, and the daemon's core in memory (:mod:`.daemon`). Any test package may use it."""
