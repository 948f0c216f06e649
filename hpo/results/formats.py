"""Rendering rows as text, Markdown, CSV, JSON, LaTeX or HTML, with one set of number formats.

Every format shows the same columns under the same names, with numbers rounded the same way,
so a table pasted from the terminal matches the CSV and the report.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any
from collections.abc import Callable, Sequence

FORMATS = ("table", "md", "csv", "json", "latex", "html")

# Digits after the point, per column; other floats get 4, learning rates keep what they have.
DIGITS = {"val_accuracy": 4, "test_accuracy": 4, "test_loss": 4, "duration_s": 1,
          "report_accuracy": 4, "report_loss": 2, "diff_accuracy": 4, "diff_loss": 4,
          "mean_test_accuracy": 4, "std_test_accuracy": 4}


def format_value(column: str, value: Any) -> Any:
    """The value as every format shows it: rounded float, or as it is."""
    if isinstance(value, float) and column != "learning_rate":
        return round(value, DIGITS.get(column, 4))
    return value


def _text(column: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):  # a list of numbers, such as trial numbers: "3 7 12" (JSON keeps the list)
        return " ".join(_text(column, item) for item in value)
    value = format_value(column, value)
    if value is None:
        return ""
    if isinstance(value, float) and column != "learning_rate":
        return f"{value:.{DIGITS.get(column, 4)}f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    return _RENDERERS[fmt](rows, columns)


def _table(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_text(c, row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


# Cell escapes, one character at a time (no escape is escaped again). A line break in a value
# would end the row: Markdown shows it as <br>, LaTeX (whose tabular cells hold one line) as a
# space, as HTML does.
_MARKDOWN = str.maketrans({"|": "\\|", "\n": "<br>", "\r": ""})
_LATEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                        "\n": " ", "\r": ""})


def _markdown(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.translate(_MARKDOWN) for v in values) + " |"

    lines = [line(columns), "|" + "---|" * len(columns)]
    lines += [line([_text(c, row.get(c)) for c in columns]) for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_text(c, row.get(c)) for c in columns] for row in rows)
    return out.getvalue()


def _json(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    data = [{c: format_value(c, row.get(c)) for c in columns} for row in rows]
    return json.dumps(data, indent=2) + "\n"


def _latex(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    def esc(text: str) -> str:
        return text.translate(_LATEX)

    lines = [r"\begin{tabular}{" + "l" * len(columns) + "}", r"\hline",
             " & ".join(esc(c) for c in columns) + r" \\", r"\hline"]
    lines += [" & ".join(esc(_text(c, row.get(c))) for c in columns) + r" \\" for row in rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _html(rows: Sequence[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(c, row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"


_RENDERERS: dict[str, Callable[[Sequence[dict[str, Any]], list[str]], str]] = {
    "table": _table, "md": _markdown, "csv": _csv, "json": _json, "latex": _latex, "html": _html,
}
