"""The ``hooked-clip`` console script: one subcommand per study package, which adds it itself (see
:func:`study_clis`).

Error policy (one place, :func:`main`): a user error -- a bad argument, a missing or damaged file, a
checkpoint that does not fit, weights that cannot be fetched -- prints one line ``hooked-clip: error: ...``
and exits with status 2; anything else is a bug and keeps its traceback (exit 1). ``--debug`` shows the
traceback for user errors too. Ctrl-C exits with 130 (a study run resumes where it stopped).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from types import ModuleType
from typing import Optional, Sequence

from hooked_clip.errors import (CheckpointMismatchError, UnreadableFileError, UnsafeCheckpointError,
                                WeightsUnavailableError)

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # a bad value (the study's RunDirMismatchError and DataFormatError are ValueErrors too)
    TypeError,  # an argument of the wrong type
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,  # a path that is not there
    CheckpointMismatchError, UnreadableFileError, UnsafeCheckpointError,  # a file that cannot be used
    WeightsUnavailableError,  # weights neither on disk nor reachable
)
"""Exception types (and their subclasses) reported as one line with exit status 2."""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


STUDY_CLI = "cli"
"""The module of a study package that declares its subcommand."""


def study_clis() -> list[ModuleType]:
    """The ``cli`` module of every study package under ``hooked_clip.analyses`` that declares a subcommand,
    ordered by subcommand name. Such a module (``hooked_clip.analyses.<study>.cli``) defines ``SUBCOMMAND``
    (the name typed after ``hooked-clip``), ``HELP`` (its line in ``hooked-clip --help``),
    ``add_arguments(parser)`` and ``run(args)``; its docstring is the subcommand's ``--help`` text. This
    module names no study."""
    import hooked_clip.analyses as analyses

    found = []
    for info in pkgutil.iter_modules(analyses.__path__, analyses.__name__ + "."):
        name = f"{info.name}.{STUDY_CLI}"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            if hasattr(module, "SUBCOMMAND"):
                found.append(module)
    return sorted(found, key=lambda m: m.SUBCOMMAND)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooked-clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for user errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    for study in study_clis():
        command = sub.add_parser(study.SUBCOMMAND, help=study.HELP, description=study.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        study.add_arguments(command)
        command.set_defaults(run=study.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse ``argv`` (default: the command line), run the subcommand, apply the error policy."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("hooked-clip: interrupted; run the same command again to resume.", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except SystemExit as exit_:  # subcommands refuse bad option combinations with SystemExit(message)
        if args.debug or not isinstance(exit_.code, str):
            raise
        _fail(exit_.code)
    except USER_ERRORS as err:
        if args.debug:
            raise
        _fail(str(err) or type(err).__name__)


def _fail(message: str) -> None:
    """Print a user error as one line and exit with status 2."""
    print(f"hooked-clip: error: {' '.join(message.split())} (--debug shows the traceback)", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None


if __name__ == "__main__":
    main()
