"""The background tree builder (DESIGN.md §3–§5, §10; layout: docs/adr/0005).

Writing a file's ``<ns>.ima`` or ``<ns>.verity`` attribute starts a build of its Merkle tree in
a worker process; the daemon alone commits results to the state database and the tree store.
The daemon is three collaborators and a loop (:mod:`.core`):

* :mod:`.tracker` — events (:mod:`.watcher` over fanotify or inotify), observations, the state
  database; decisions come from :mod:`.lifecycle` (pure functions of row and observation);
* :mod:`.scheduler` — the queue and worker pool (:mod:`.pool`, :mod:`.worker`), partial builds
  (checkpoints), the tree store, the kernel backend (:mod:`.kernelstore`); verdicts from the
  ``protect`` gate through :mod:`.protection`;
* :mod:`.control` — the control socket (:mod:`.server`; :mod:`.client` is the other end).

Worker messages are the frozen dataclasses of :mod:`.protocol`; :mod:`.config` holds the
settings. The resumable builder the workers run is :mod:`pyverity.hashing.resumable`.
"""
