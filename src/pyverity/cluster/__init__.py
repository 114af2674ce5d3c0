"""The bulk verbs on a Dask cluster (issue 14; docs/cluster.md).

A workflow package at the protect/manifest layer, imported only when ``--cluster`` is given
(Dask is never imported otherwise):

* :mod:`.tasks`: what workers run (read and hash only; results carry the stat they saw);
* :mod:`.plan`: tasks bounded in bytes, big files cut into ranges of whole aligned subtrees
  (:mod:`pyverity.hashing.subtree`), whole-file hashes one task per file;
* :mod:`.connect`: ``local[:N]`` (TLS on loopback), ``tcp://`` (loopback or ``--insecure``),
  ``tls://`` (Dask's TLS settings);
* :mod:`.engine`: a bounded window of tasks, a lost scheduler as one :class:`ClusterError`;
* :mod:`.digests`: the client side (parts gathered and folded, stat checks, ``--recheck``,
  results in input order);
* :mod:`.bulk`: the shapes ``sign -r``, ``verify -r`` and ``manifest create`` consume.
"""
