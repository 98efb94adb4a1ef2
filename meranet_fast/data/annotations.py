"""Reading the annotation spreadsheets of the micro-expression releases (``.xlsx``, with openpyxl)."""
from __future__ import annotations

import glob
import os
import re
import zipfile
from typing import Any

from meranet_fast._optional import require
from meranet_fast.data.samples import AnnotationError

__all__ = ["find_spreadsheet", "read_sheet_rows", "read_table", "sheet_names"]

#: How many leading rows are searched for the header (SAMM's header is on row 14).
MAX_HEADER_ROW = 40


def _norm(cell: Any) -> str:
    """Header cell → comparable key: lower case, letters and digits only (``"Onset Frame"`` → ``"onsetframe"``)."""
    return re.sub(r"[^a-z0-9]", "", str(cell).lower()) if cell is not None else ""


def find_spreadsheet(root: str, pattern: str, explicit: str | None = None) -> str:
    """The annotation spreadsheet of a release: ``explicit`` if given, else the one file matching ``pattern``
    in ``root`` or a folder directly inside it (newest name first when several match).

    Raises:
        AnnotationError: nothing matches (the message names the folder and the pattern), or ``explicit``
            does not exist.
    """
    if explicit is not None:
        if not os.path.isfile(explicit):
            raise AnnotationError(f"annotation spreadsheet not found: {explicit}")
        return explicit
    hits = sorted(glob.glob(os.path.join(root, pattern)) + glob.glob(os.path.join(root, "*", pattern)))
    if not hits:
        raise AnnotationError(f"no annotation spreadsheet matching {pattern!r} in {root} (or its sub-folders); "
                              "pass its path explicitly")
    return hits[-1]


def _open(path: str):
    openpyxl = require("openpyxl")
    if path.lower().endswith(".xls"):
        raise AnnotationError(f"{path}: legacy .xls spreadsheets are not supported; convert it to .xlsx "
                              "(e.g. `soffice --headless --convert-to xlsx FILE`)")
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise AnnotationError(f"annotation spreadsheet not found: {path}") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise AnnotationError(f"cannot read annotation spreadsheet {path}: {type(e).__name__}: {e}") from None


def sheet_names(path: str) -> list[str]:
    """Names of the worksheets of ``path``, in workbook order."""
    wb = _open(path)
    try:
        return list(wb.sheetnames)
    finally:
        wb.close()


def read_sheet_rows(path: str, sheet: int | str = 0) -> list[tuple[Any, ...]]:
    """All rows of one worksheet (by index or name) as tuples of cell values.

    Raises:
        AnnotationError: the file is missing/corrupt or has no such sheet (the message names the file).
    """
    wb = _open(path)
    try:
        names = wb.sheetnames
        if isinstance(sheet, int):
            if not 0 <= sheet < len(names):
                raise AnnotationError(f"{path}: has {len(names)} sheet(s), sheet index {sheet} requested")
            ws = wb[names[sheet]]
        else:
            if sheet not in names:
                raise AnnotationError(f"{path}: no sheet named {sheet!r} (sheets: {names})")
            ws = wb[sheet]
        return [tuple(row) for row in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def read_table(path: str, columns: dict[str, tuple[str, ...]], sheet: int | str = 0,
               optional: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a spreadsheet table as ``{field: value}`` dicts.

    Args:
        path: the ``.xlsx`` file.
        columns: ``{field: accepted header names}``; header names are compared after :func:`_norm`, so
            ``"Onset Frame"``, ``"OnsetFrame"`` and ``"onset_frame"`` are the same.
        sheet: worksheet index or name.
        optional: fields that may be absent (their value is then ``None``).

    The header row is the first of the first :data:`MAX_HEADER_ROW` rows that holds a header for every
    required field. Rows after it whose mapped cells are all empty are skipped.

    Raises:
        AnnotationError: no such header row (the message names the file and the missing columns).
    """
    rows = read_sheet_rows(path, sheet)
    wanted = {f: {_norm(a) for a in aliases} for f, aliases in columns.items()}
    required = [f for f in columns if f not in optional]
    best_missing: list[str] = required
    for r, row in enumerate(rows[:MAX_HEADER_ROW]):
        keys = [_norm(c) for c in row]
        position = {}
        for f, aliases in wanted.items():
            hit = next((i for i, k in enumerate(keys) if k in aliases), None)
            if hit is not None:
                position[f] = hit
        missing = [f for f in required if f not in position]
        if not missing:
            table = []
            for data in rows[r + 1:]:
                record = {f: (data[i] if i < len(data) else None) for f, i in position.items()}
                if all(v is None or str(v).strip() == "" for v in record.values()):
                    continue
                record.update({f: None for f in optional if f not in position})
                table.append(record)
            return table
        if len(missing) < len(best_missing):
            best_missing = missing
    expected = ", ".join(f"{f} ({' / '.join(columns[f])})" for f in best_missing)
    raise AnnotationError(f"{path}: no header row with the columns {expected} in its first "
                          f"{MAX_HEADER_ROW} rows")
