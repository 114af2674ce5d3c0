"""Attestation: Keylime runtime policies from manifests, and measurement lists checked against
an allowlist (a Keylime policy or a pyverity manifest), fs-verity digests included.

A workflow package above :mod:`pyverity.manifest` and :mod:`pyverity.measure` (it imports
those, format, fs and keys; only the CLI imports it). docs/attestation.md walks through it.

* :mod:`.regex`: keylime's ``excludes`` evaluated without backtracking (a Pike VM).
* :mod:`.keylime`: :func:`~.keylime.export_policy` writes a runtime policy from a verified
  manifest, streamed; :func:`~.keylime.check_policy_shape` is keylime's schema, by hand.
* :mod:`.allowlist`: :func:`~.allowlist.load_allowlist` indexes a policy or a manifest on disk
  (bounded memory), :class:`~.allowlist.AllowlistChecker` judges one list record at a time.
"""
