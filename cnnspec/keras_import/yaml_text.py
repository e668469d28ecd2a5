"""Spec data as YAML written the way specs/ are: one layer per line, top-level keys in the usual order."""

from __future__ import annotations

from typing import Any

import yaml

ORDER = ("name", "input", "labels", "preprocess", "blocks", "layers")


def _line(value: Any) -> str:
    """One value as a YAML flow item on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _layers(items: list[dict], indent: str) -> list[str]:
    return [f"{indent}- {_line(item)}" for item in items]


def spec_yaml(data: dict, header: list[str]) -> str:
    lines = [f"# {line}" for line in header]
    for key in ORDER:
        if key not in data:
            continue
        value = data[key]
        if key == "blocks":
            lines.append("blocks:")
            for name, block in value.items():
                lines.append(f"  {_line(name)}:")
                extra = {k: v for k, v in block.items() if k != "layers"}
                lines += [f"    {k}: {_line(v)}" for k, v in extra.items()]
                lines.append("    layers:")
                lines += _layers(block["layers"], "      ")
        elif key == "layers":
            lines.append("layers:")
            lines += _layers(value, "  ")
        else:
            lines.append(f"{key}: {_line(value)}")
    return "\n".join(lines) + "\n"
