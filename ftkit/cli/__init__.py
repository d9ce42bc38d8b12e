"""The ``ftkit`` command line: ``main`` parses the arguments (``parser``) and runs one command
(``jobs``, ``service``, ``datasets``, ``demo``), turning ftkit's errors into a message and exit 2."""

from __future__ import annotations

import logging
import sys

from ..errors import FtkitError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "worker":
        logging.getLogger("huey").setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except FtkitError as exc:
        print(f"ftkit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
