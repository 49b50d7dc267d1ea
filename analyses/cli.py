"""The ``hooked-clip`` console script. Subcommands: ``valse-negation`` (the packaged VALSE study)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    from hooked_clip.analyses.valse_negation import cli as valse

    parser = argparse.ArgumentParser(prog="hooked-clip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    study = sub.add_parser("valse-negation", help="replicate Quantmeyer et al. (2024) on VALSE existence",
                           description=valse.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    valse.add_arguments(study)
    args = parser.parse_args(argv)
    if args.command == "valse-negation":
        valse.run(args)


if __name__ == "__main__":
    main()
