"""Errors as data: an Issue says what is wrong and where; the CLI renders them once.

stdlib only, so every module (and a fast `cnnspec validate`) can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Issue:
    """One problem found in user input.

    `layer` is the 0-based index into the spec's `layers` (None for top-level problems) and `field`
    the dotted field name inside that layer or the spec, so tools can point at the exact spot.
    """

    message: str
    layer: int | None = None
    field: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def collapse(issues: list[Issue], show: int = 3) -> list[str]:
    """The issues as lines, one per kind: the same fault in several layers is one line naming the layers.

    "layers[0] Conv2D 'a': activation must be ..." and the same for layers[1] and [2] become
    "activation must be ... (in 3 layers: layers[0] Conv2D 'a', layers[1] ..., layers[2] ...)".
    """
    groups: dict[tuple[str | None, str], list[str]] = {}
    for issue in issues:
        where, sep, rest = issue.message.partition(": ")
        if issue.layer is None or not sep or not where.startswith("layers["):
            where, rest = "", issue.message
        groups.setdefault((issue.field, rest), []).append(where)
    lines = []
    for (_, rest), places in groups.items():
        if len(places) == 1:
            lines.append(f"{places[0]}: {rest}" if places[0] else rest)
        else:
            named = ", ".join(places[:show]) + (f" and {len(places) - show} more" if len(places) > show else "")
            lines.append(f"{rest} (in {len(places)} layers: {named})")
    return lines


class CnnspecError(Exception):
    """Any error caused by user input (spec, image, model file, data, arguments).

    The CLI prints it as `error: <message>` and exits 1; it never shows a traceback for these.
    """

    exit_code = 1


class SpecError(CnnspecError):
    """A spec that cannot be loaded or does not validate; carries every issue found."""

    def __init__(self, issues: list[Issue] | Issue | str) -> None:
        if isinstance(issues, str):
            issues = [Issue(issues)]
        elif isinstance(issues, Issue):
            issues = [issues]
        self.issues: list[Issue] = list(issues)
        super().__init__("\n".join(i.message for i in self.issues))


class UsageError(CnnspecError):
    """Bad command-line usage (a missing file, a directory where a file belongs): exit code 2."""

    exit_code = 2


class ModelError(CnnspecError):
    """An .onnx file that cnnspec refuses to load or run."""


class DataError(CnnspecError):
    """A training or evaluation data set that cannot be used."""
