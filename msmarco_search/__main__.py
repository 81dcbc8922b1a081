"""``python -m msmarco_search COMMAND [ARGS]``: every command of the package, where its console commands may not be
on the PATH (``python -m msmarco_search --help`` lists them)."""

from __future__ import annotations

import argparse
import sys

from msmarco_search.cli import COMMANDS, run
from msmarco_search.core.commands import MODULE, MODULE_COMMAND


def main(argv: list[str] | None = None) -> int:
    """Run ``COMMAND`` with the arguments after it (it exits); without a known command, the list of them."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in COMMANDS:
        run(COMMANDS[arguments[0]][0](), arguments[1:], form=MODULE)
    parser = argparse.ArgumentParser(prog=MODULE_COMMAND,
                                     description="Every command of the package, where its console commands "
                                                 "(msmarco-COMMAND) may not be on the PATH.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {name:<9} {what}"
                                                                      for name, (_, what) in COMMANDS.items())
                                     + f"\n\n{MODULE_COMMAND} COMMAND --help shows a command's own flags.")
    parser.add_argument("command", choices=COMMANDS, help="the command to run")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="its arguments")
    parser.parse_args(arguments)  # --help and an unknown command end here (exit status 0 or 2)
    return 2


if __name__ == "__main__":
    sys.exit(main())
