"""A one-line progress bar for the bulk verbs: files, bytes, rate and ETA, on a terminal only.

Elsewhere (a pipe, a log, ``--json``) it stays quiet; :meth:`Bar.summary` gives the totals a
``--json`` summary reports. Totals may be unknown (a walk still going): no ETA then.

``manifest create`` drives it through :func:`counted` (the local pool's source or the
cluster's alike); ``sign -r`` / ``verify -r`` on a cluster through :func:`cluster_bar`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pyverity.cluster.digests import Got
    from pyverity.manifest.compute import Computed, Failed
    from pyverity.manifest.create import Source
    from pyverity.manifest.model import SymlinkEntry
    from pyverity.manifest.walk import Found

__all__ = ["Bar", "cluster_bar", "counted", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Bar:
    def __init__(
        self,
        verb: str,
        *,
        files: int | None = None,
        nbytes: int | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.verb = verb
        self.total_files = files
        self.total_bytes = nbytes
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.files = 0
        self.bytes = 0
        self.failed = 0
        self.start = time.monotonic()
        self._last = 0.0

    def advance(self, nbytes: int = 0, *, failed: bool = False) -> None:
        self.files += 1
        self.bytes += nbytes
        self.failed += failed
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = self.bytes / elapsed
        files = f"{self.files}" + (f"/{self.total_files}" if self.total_files else "")
        size = human_bytes(self.bytes) + (
            f"/{human_bytes(self.total_bytes)}" if self.total_bytes else ""
        )
        bar = ""
        eta = ""
        if self.total_bytes or self.total_files:
            if self.total_bytes:
                frac = min(self.bytes / self.total_bytes, 1.0)
            else:
                frac = min(self.files / (self.total_files or 1), 1.0)
            bar = "[" + "#" * int(30 * frac) + "-" * (30 - int(30 * frac)) + "] "
            if frac > 0:
                left = elapsed * (1 - frac) / frac
                eta = f", ETA {int(left) // 60}:{int(left) % 60:02d}"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.verb} {bar}{files} files, {size}, {human_bytes(rate)}/s{eta}{failed}"

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()

    def summary(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.start
        return {
            "files": self.files,
            "bytes": self.bytes,
            "failed": self.failed,
            "seconds": round(elapsed, 3),
            "bytes_per_second": round(self.bytes / elapsed) if elapsed > 0 else 0,
        }


class _GotBar(Bar):
    def got(self, got: Got) -> None:
        """Count one of the cluster's results."""
        listed = got.want.listed
        self.advance(listed.size if listed is not None else 0, failed=not got.ok)


def cluster_bar(verb: str, files: int | None = None, *, enabled: bool = True) -> _GotBar:
    """A bar fed by the cluster's results (``on_done=bar.got``)."""
    return _GotBar(verb, files=files, enabled=enabled)


def counted(source: Source, bar: Bar) -> Source:
    """``source`` advancing ``bar`` by one file (and its bytes) per file entry it yields."""
    from pyverity.manifest.compute import Computed, Failed

    def run(work: Iterator[tuple[str, Found]]) -> Iterator[Computed | Failed | SymlinkEntry]:
        for item in source(work):
            if isinstance(item, Computed):
                bar.advance(item.digests.descriptor.data_size)
            elif isinstance(item, Failed):
                bar.advance(failed=True)
            yield item

    return run
