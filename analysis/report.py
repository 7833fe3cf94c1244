"""Write an analysis result as ``<out>/<what>.json`` and ``<out>/<what>.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def fmt(value: Any, err: Any = None, digits: int = 3) -> str:
    """``value ± err`` with ``digits`` significant digits; '-' for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)) and err is None:
        return str(value)
    if isinstance(value, str):
        return value
    text = f"{value:.{digits}g}"
    if err is not None and not (isinstance(err, float) and math.isnan(err)):
        text += f" ± {err:.2g}"
    return text


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (cells already formatted or passed to ``fmt``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):  # full time series ("series") stay in the plots, not in the JSON
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "series"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(out_dir: str | Path, what: str, data: dict, markdown: str,
                 warnings: list[str] | None = None, notes: list[str] | None = None) -> dict:
    """Write ``<what>.json`` (data + warnings) and ``<what>.md`` (title, table, notes, warnings).

    Returns ``data`` with the Markdown table added under ``"markdown"`` (not in the JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(data)
    payload["warnings"] = list(warnings or [])
    (out / f"{what}.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    md = [f"# {what}", "", markdown.strip(), ""] + [f"- {note}" for note in notes or []]
    if warnings:
        md += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    (out / f"{what}.md").write_text("\n".join(md).rstrip() + "\n")
    data["markdown"] = markdown
    return data
