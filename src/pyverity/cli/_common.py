"""What every subcommand shares: argument parsing that raises, and error printing."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from pyverity.errors import Error, UsageError

__all__ = ["ArgumentParser", "OnceAction", "run", "set_verbose"]

_state = {"verbose": False}


def set_verbose(on: bool) -> None:
    _state["verbose"] = on


def verbose() -> bool:
    return _state["verbose"] or os.environ.get("PYVERITY_DEBUG") == "1"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors become :class:`UsageError` (exit 2, with usage)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, remedy=self.format_usage().strip())


class OnceAction(argparse.Action):
    """Store a value, refusing a second occurrence as ``fsverity`` does."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, f"_seen_{self.dest}", False):
            raise UsageError(
                f"{self.option_strings[0]} can only be specified once",
                remedy=parser.format_usage().strip(),
            )
        setattr(namespace, f"_seen_{self.dest}", True)
        setattr(namespace, self.dest, values)


def print_error(err: Error) -> None:
    sys.stderr.write(f"ERROR: {err}\n")
    if err.remedy:
        sys.stderr.write(f"{err.remedy}\n")


def run(fn: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a subcommand's ``main``, turning :class:`Error` into its message and exit code.

    Logging is configured when the subcommand's modules use it (they import it when they are
    imported, before this runs) or with ``-v``: ``pyverity digest`` does not, and its start-up
    counts (spec: at most 60 ms).
    """
    if verbose():
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    elif "logging" in sys.modules:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return fn(argv)
    except Error as err:
        if verbose():
            import traceback

            traceback.print_exc()
        print_error(err)
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("ERROR: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
