"""Command line entry point: `sipushd <command> ...`.

Each command lives in the module that owns it; that module provides
`add_arguments(parser)` and `run(args) -> int` (the process exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sipushd.app", "run the registrar and proxy"),
    "mock-pns": ("sipushd.testing.mock_pns", "run the mock APNs/FCM push service"),
    "check-config": ("sipushd.config", "validate a config file and print a summary"),
    "passwd": ("sipushd.users", "add or change a user in the users file"),
    "push-test": ("sipushd.pushtest", "send one push with the configured credentials"),
    "bindings": ("sipushd.bindings", "print the stored bindings (tokens redacted)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(prog="sipushd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    args = build_parser().parse_args(argv)
    status: int = args._module.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
