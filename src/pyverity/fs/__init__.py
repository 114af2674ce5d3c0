"""Thin, checked wrappers over the OS: opening files safely, attributes, fs-verity ioctls.

This package sits above ``format`` and below ``hashing`` in the layering (DESIGN.md §9, ADR
0002): it does I/O but knows no policy, and imports nothing of pyverity but ``errors`` and
``format``. Everything it returns from disk is untrusted until a caller verifies it.

Watching files: :mod:`.watch` (the event shape, the event bits both kernels share and the
``Watch`` protocol), :mod:`.inotify` (a watch per directory) and :mod:`.fanotify` (one mark per
filesystem, Linux >= 5.9).

Reading and opening: :mod:`.readexact` (``pread_exact``: positional reads short only at end of
file; ``pread_blocks``: the tree builders' read of whole blocks), :mod:`.openfile` (regular
files only; ``FileRef``, a file of a batch command opened beneath the directory it was walked
from), :mod:`.beneath` (resolution without symlinks).
"""
