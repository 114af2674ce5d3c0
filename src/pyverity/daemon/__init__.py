"""The background tree builder (DESIGN.md §3–§5, §10).

Writing a file's ``<ns>.ima`` or ``<ns>.verity`` attribute starts a build of its Merkle tree in
a worker process; the daemon alone commits results to the state database and the tree store.
Modules: :mod:`.config` (settings, directory checks), :mod:`.watcher` (events, over
inotify), :mod:`.protection` (reading and appraising attributes), :mod:`.lifecycle` (the state
machine), :mod:`.jobs` (priority queue), :mod:`.worker` and :mod:`.pool` (build processes),
:mod:`.server` and :mod:`.client` (control socket), :mod:`.core` (the event loop).
"""
