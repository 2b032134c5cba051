"""Text from users (slide ids, case ids, failure reasons) made safe for HTML and CSV.

- :func:`html` escapes for HTML text and attribute values (quotes included).
- :func:`csv_cell` neutralises spreadsheet formulas: a cell that starts with ``=``, ``+``,
  ``-``, ``@`` (or a tab / carriage return, which some spreadsheets skip) gets a leading
  single quote, so Excel or LibreOffice shows it as text instead of running it.
  Numbers are left alone (a negative risk stays a number).
- :func:`neutralise_frame` applies :func:`csv_cell` to every text cell of a DataFrame.
"""

from __future__ import annotations

import html as _html
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def html(value: Any) -> str:
    """``value`` as HTML-escaped text (``None`` becomes an empty string)."""
    return _html.escape("" if value is None else str(value), quote=True)


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not evaluate; non-strings pass through unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def neutralise_frame(frame):
    """A copy of a pandas DataFrame with every string cell passed through :func:`csv_cell`."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(csv_cell)
    out.columns = [csv_cell(str(c)) for c in out.columns]
    return out
