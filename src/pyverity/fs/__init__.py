"""Thin, checked wrappers over the OS: opening files safely, attributes, fs-verity ioctls.

This package sits beside ``hashing`` in the layering (DESIGN.md §9): it does I/O but knows no
policy. Everything it returns from disk is untrusted until a caller verifies it.
"""
