"""What every imaginet command line shares (`imaginet-shards`, `imaginet-train` and the scripts in
tools/): exit statuses, `-v`/`-q` logging, `--json -`, and one boundary that turns the library's
errors into a single `Error: …` line.

Exit statuses: 0 when all is well, 1 when a check ran and found problems (verify, check-annotations),
2 when the command could not run (bad usage, a bad option value, a missing or unusable input). The
boundary catches `ImaginetError` (bad data, failed storage), `ValueError` (bad values), `OSError`
(missing files) and `NotImplementedError` (an option combination a backend does not support);
anything else is a bug and keeps its traceback. With `-vv` the caught error's
traceback is logged too.

Standard library only, so that `tools/gpu_check.py` can use it on a machine with just torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from imaginet_shards.errors import ImaginetError

__all__ = ["EXIT_ERROR", "EXIT_HELP", "EXIT_OK", "EXIT_PROBLEMS", "QUIET_HELP", "VERBOSE_HELP",
           "add_logging_arguments", "configure_logging", "run_command", "run_tool",
           "user_error_message", "write_json"]

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
# NotImplementedError: an option combination a backend does not support (DALI with on_error="skip")
USER_ERRORS = (ImaginetError, ValueError, OSError, NotImplementedError)
PACKAGES = ("imaginet_shards", "imaginet_train")
VERBOSE_HELP = "More log messages on stderr (-v: INFO from imaginet; -vv: DEBUG from every library)."
QUIET_HELP = "Show error log messages only."
EXIT_HELP = "Exit status: 0 all well, 1 problems found (a check failed), 2 could not run."

log = logging.getLogger(__name__)


def configure_logging(verbose: int = 0, quiet: bool = False) -> Callable[[], None]:
    """Send log records to stderr: warnings by default, INFO from the imaginet packages with
    `verbose=1`, DEBUG from every library with 2, errors only with `quiet`. Returns the function
    that undoes it (commands run in-process in tests must not leave handlers behind)."""
    if quiet:
        ours = everyone = logging.ERROR
    elif verbose >= 2:
        ours = everyone = logging.DEBUG
    else:
        ours, everyone = (logging.INFO if verbose else logging.WARNING), logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in PACKAGES]
    previous = [(logger, logger.level) for logger in (root, *loggers)]
    root.addHandler(handler)
    root.setLevel(everyone)
    for logger in loggers:
        logger.setLevel(ours)

    def restore() -> None:
        root.removeHandler(handler)
        for logger, level in previous:
            logger.setLevel(level)
    return restore


def user_error_message(exc: BaseException) -> str | None:
    """The message to end a command with for an error the user can act on (bad data, a bad value,
    a missing file); None for anything else, which is a bug and keeps its traceback."""
    if isinstance(exc, BrokenPipeError) or not isinstance(exc, USER_ERRORS):
        return None
    log.debug("the command stopped on this error:", exc_info=exc)
    return str(exc)


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as JSON to the file `target` (under a temporary name, then renamed), or to
    stdout when `target` is "-"."""
    text = json.dumps(data, indent=1) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    import tempfile  # imported here, as subprocess below: every command line imports this module

    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def add_logging_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`-v/--verbose` (repeatable) and `-q/--quiet` on an argparse parser (the tools' scripts)."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    return parser


def run_command(command: list[str]) -> None:
    """Run a command line as a user would (a tool's stage); when it fails, it has said why on
    stderr, and the tool ends with its exit status (2 if a signal ended it)."""
    import subprocess

    status = subprocess.run(command).returncode
    if status != 0:
        sys.exit(status if status > 0 else EXIT_ERROR)


def run_tool(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], int | None]
             ) -> NoReturn:
    """A tool script's entry point: parse the command line (usage errors exit 2), configure logging
    from -v/-q, run `main` and exit with its status (None: 0); a user error ends the script with
    one `Error: …` line on stderr and status 2."""
    args = add_logging_arguments(parser).parse_args()
    restore = configure_logging(args.verbose, args.quiet)
    try:
        status = main(args)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"Error: {message}", file=sys.stderr)
        status = EXIT_ERROR
    finally:
        restore()
    sys.exit(status or EXIT_OK)
