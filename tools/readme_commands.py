"""Regenerate README.md's command table from the commands' help (tests/test_cli_help.py fails when it is stale).

python tools/readme_commands.py
"""

from __future__ import annotations

from pathlib import Path

from cnnspec.cli import app
from cnnspec.cli_help import readme_table, with_readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    text = README.read_text(encoding="utf-8")
    updated = with_readme_table(text, readme_table(app))
    if updated != text:
        README.write_text(updated, encoding="utf-8")
        print(f"updated {README}")
    else:
        print(f"{README} is up to date")


if __name__ == "__main__":
    main()
