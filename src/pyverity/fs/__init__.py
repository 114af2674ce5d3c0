"""Thin, checked wrappers over the OS: opening files safely, attributes, fs-verity ioctls.

This package sits beside ``hashing`` in the layering (DESIGN.md §9): it does I/O but knows no
policy. Everything it returns from disk is untrusted until a caller verifies it.

Watching files: :mod:`.watch` (the event shape and the ``Watch`` protocol), :mod:`.inotify` (a
watch per directory) and :mod:`.fanotify` (one mark per filesystem, Linux >= 5.9).

Reading and opening: :mod:`.readexact` (``pread_exact``: positional reads short only at end of
file), :mod:`.openfile` (regular files only; ``FileRef``, a file of a batch command opened
beneath the directory it was walked from), :mod:`.beneath` (resolution without symlinks).
"""
