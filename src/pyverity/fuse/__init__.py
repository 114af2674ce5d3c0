"""The verifying FUSE filesystem (DESIGN.md §6): a thin adapter from :mod:`pyverity.reader`
results to errnos, on mfusepy (libfuse 3). Importing :mod:`pyverity.fuse.mount` loads libfuse.
"""

from pyverity.fuse.config import MountConfig

__all__ = ["MountConfig"]
