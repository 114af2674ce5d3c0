"""Submitting units of work to a Dask client with a bounded window, results as they complete.

At most ``window`` tasks are in flight (by default four per worker thread), each bounded in
bytes by the plan, so memory on the client does not grow with the tree. A task lost with its
worker (``kill -9``, a node gone) is run again by the scheduler; one that kills workers
repeatedly, or a scheduler that goes away, ends the run with one :class:`ClusterError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from pyverity.cluster.connect import ClusterError, error_line
from pyverity.cluster.tasks import Opaque, run_opaque

__all__ = ["Engine"]

U = TypeVar("U")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: Seconds without any result, while tasks are in flight, before the scheduler is asked
#: whether it is still there.
_POLL = 5.0


class Engine(Generic[U, R]):
    """Runs ``fn(unit)`` on the cluster for each unit; yields ``(unit, result)`` unordered
    (``decode``: what is made of each result here, e.g. :func:`~.tasks.load_replies` of the
    bytes :func:`~.tasks.run_packed` returns)."""

    def __init__(
        self,
        client: Any,
        fn: Callable[[U], Any],
        *,
        window: int | None = None,
        decode: Callable[[Any], R] | None = None,
    ) -> None:
        self._client = client
        self._fn = fn
        self._decode = decode
        self.address = str(getattr(client, "scheduler", None) and client.scheduler.address)
        if window is None:
            try:
                threads = sum(client.nthreads().values())
            except Exception as e:  # noqa: BLE001 - any failure here is the scheduler's
                raise self._lost(e) from None
            window = 4 * max(1, threads)
        self.window = window

    def _lost(self, e: BaseException) -> ClusterError:
        text = error_line(e, last="cancelled" in str(e))
        if type(e).__name__ == "KilledWorker":
            return ClusterError(
                f"a task killed the cluster's workers again and again: {text}",
                remedy="check the workers' memory and logs",
            )
        return ClusterError(
            f"lost the cluster's scheduler ({self.address}): {text}",
            remedy="run again once the scheduler is back; work already done is kept",
        )

    def _failed(self, fut: Any) -> ClusterError:
        """The error of a task that raised on its worker (a bug there, not a lost cluster);
        the worker's traceback goes to the debug log."""
        e = fut.exception()
        if type(e).__name__ == "KilledWorker":
            return self._lost(e)
        import traceback

        tb = "".join(traceback.format_tb(fut.traceback()))
        log.debug("the task's traceback on its worker:\n%s", tb)
        first = error_line(e, default="")
        return ClusterError(
            f"a task failed on a worker of {self.address}: {type(e).__name__}: {first}",
            remedy="run again; if it fails again, report it with the output of PYVERITY_DEBUG=1",
        )

    def run(
        self, units: Iterable[U], *, hold: Callable[[], bool] | None = None
    ) -> Iterator[tuple[U, R]]:
        """Submit units, at most ``window`` in flight (none more while ``hold()`` is true)."""
        import distributed

        it = iter(units)
        pending: dict[Any, U] = {}
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while (
                not exhausted
                and len(pending) < self.window
                and not (hold and pending and hold())  # never hold with nothing in flight
            ):
                try:
                    unit = next(it)
                except StopIteration:
                    exhausted = True
                    return
                fut = self._client.submit(run_opaque, self._fn, Opaque(unit), pure=False)
                pending[fut] = unit

        try:
            fill()
            while pending:
                done = self._completed(distributed, list(pending))
                for fut in done:
                    if fut.status == "error":
                        raise self._failed(fut)
                # One round trip for all the results in (not one per future).
                results = self._client.gather(done)
                for fut, result in zip(done, results, strict=True):
                    unit = pending.pop(fut)
                    fut.release()
                    yield unit, result if self._decode is None else self._decode(result)
                fill()
        except ClusterError:
            raise
        except Exception as e:
            raise self._lost(e) from e
        finally:
            for fut in pending:
                fut.cancel()

    def _completed(self, distributed: Any, futures: list[Any]) -> list[Any]:
        """The futures done so far (at least one); checks the scheduler while none is."""
        while True:
            try:
                return list(
                    distributed.wait(futures, timeout=_POLL, return_when="FIRST_COMPLETED").done
                )
            except TimeoutError:
                if self._client.status not in ("running", "connecting"):
                    raise ClusterError(
                        f"lost the cluster's scheduler ({self.address}):"
                        f" the client is {self._client.status}",
                        remedy="run again once the scheduler is back; work already done is kept",
                    ) from None
