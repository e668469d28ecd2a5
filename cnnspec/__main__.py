"""`python -m cnnspec` and the `cnnspec` command.

The CLI's imports (typer, click, rich) take ~0.1 s; a Ctrl-C in that window would otherwise print
Python's traceback, so it gets the same one line and exit code as a Ctrl-C later on.
"""

import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
