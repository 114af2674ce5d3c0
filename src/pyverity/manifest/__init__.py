"""Signed manifests of whole trees: protection that travels without extended attributes.

A workflow package at the protect/measure/store layer (it imports format, fs, hashing, keys,
protect; only the CLI imports it). The format is in :mod:`.model` and docs/manifest.md.

* :func:`~.create.create_manifest` walks trees in byte order of path (:mod:`.walk`), computes
  each file's fs-verity digest and whole-file hashes in one read (:mod:`.compute`, in worker
  processes with ``jobs``), signs in this process and publishes atomically.
* :func:`~.reader.open_manifest` checks the signature before any entry is read and returns a
  :class:`~.reader.VerifiedManifest` (entries from a private copy, checked strictly).
* :func:`~.compare.compare_tree` reports added, missing and changed files of a directory.
* :func:`~.apply.apply_manifest` writes descriptors and signatures where the content matches.
"""

from pyverity.manifest.apply import Applied, apply_manifest
from pyverity.manifest.compare import Difference, Summary, compare_tree
from pyverity.manifest.compute import DigestOptions
from pyverity.manifest.create import CreateOptions, CreateReport, create_manifest
from pyverity.manifest.reader import Expectations, VerifiedManifest, open_manifest

__all__ = [
    "Applied",
    "CreateOptions",
    "CreateReport",
    "Difference",
    "DigestOptions",
    "Expectations",
    "Summary",
    "VerifiedManifest",
    "apply_manifest",
    "compare_tree",
    "create_manifest",
    "open_manifest",
]
