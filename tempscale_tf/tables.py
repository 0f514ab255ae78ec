"""Results tables: CSV + Markdown with the settings and the exact command that produced them."""

from __future__ import annotations

import datetime
import pathlib

import numpy as np
import pandas as pd

from tempscale_tf.files import atomic_write_text

STD_SUFFIX = "_std"


def write_table(
    rows, path_stem, command: str, settings: dict, notes=(), floatfmt=".4g", pm_digits=4
) -> str:
    """Write `<path_stem>.csv` and `<path_stem>.md`; return the Markdown.

    Args:
      rows: a list of dicts (or a DataFrame), one per table row.
      path_stem: the output path without extension.
      command: the exact command that made the table (written in both files).
      settings: the settings to record (dataset, model, epochs, seeds, attack parameters...).
      notes: extra lines written under the Markdown table and as CSV comments.
      floatfmt: the Markdown number format.
      pm_digits: decimals of the "mean ± std" text that the Markdown shows for each
        `<column>` + `<column>_std` pair (see `mean_std`).

    The CSV starts with `# key: value` comment lines (command, settings, date) and keeps every
    column numeric; read it back with `read_table` (`pandas.read_csv(path, comment="#")`).
    """
    frame = pd.DataFrame(rows)
    stem = pathlib.Path(path_stem)
    date = datetime.date.today().isoformat()
    header = [f"# command: {command}", f"# date: {date}"]
    header += [f"# {k}: {v}" for k, v in settings.items()]
    header += [f"# note: {n}" for n in notes]
    atomic_write_text(
        stem.with_suffix(".csv"), "\n".join(header) + "\n" + frame.to_csv(index=False)
    )
    md = [
        f"# {stem.name}",
        "",
        f"Command: `{command}`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f" (generated {date}).",
        "",
    ]
    md.append(plus_minus(frame, pm_digits).to_markdown(index=False, floatfmt=floatfmt))
    if notes:
        md += ["", *[f"- {n}" for n in notes]]
    text = "\n".join(md) + "\n"
    atomic_write_text(stem.with_suffix(".md"), text)
    return text


def read_table(path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def append_row(path, row: dict) -> pd.DataFrame:
    """Append `row` to the CSV at `path` (atomically; columns are the union of all rows)."""
    path = pathlib.Path(path)
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    atomic_write_text(path, frame.to_csv(index=False))
    return frame


def mean_std(frame: pd.DataFrame, by, columns) -> pd.DataFrame:
    """Group `frame` by `by`: each column's mean in `<column>` and its standard deviation over
    the group's rows (ddof 1; NaN for a group of one) in `<column>_std`, both numeric.

    Also adds `n` (rows per group). `write_table` shows each pair as "mean ± std" in the
    Markdown and keeps the two numeric columns in the CSV.

    Args:
      frame: one row per run.
      by: the column (or list of columns) to group by.
      columns: the numeric columns to summarise.
    """
    out = []
    for key, group in frame.groupby(by, sort=True):
        rec = dict(
            zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,))
        )
        rec["n"] = len(group)
        for c in columns:
            values = group[c].dropna().to_numpy(dtype=float) if c in group else np.zeros(0)
            rec[c] = values.mean() if len(values) else np.nan
            rec[f"{c}{STD_SUFFIX}"] = values.std(ddof=1) if len(values) > 1 else np.nan
        out.append(rec)
    return pd.DataFrame(out)


def plus_minus(frame: pd.DataFrame, digits=4) -> pd.DataFrame:
    """`frame` with every `<column>` + `<column>_std` pair merged into "mean ± std" text (the
    mean alone where the std is NaN, "" where the mean is NaN), for display."""
    frame = frame.copy()
    for std in [c for c in frame.columns if c.endswith(STD_SUFFIX)]:
        column = std[: -len(STD_SUFFIX)]
        if column not in frame:
            continue
        frame[column] = [
            ""
            if pd.isna(m)
            else f"{m:.{digits}f}"
            if pd.isna(sd)
            else f"{m:.{digits}f} ± {sd:.{digits}f}"
            for m, sd in zip(frame[column], frame[std])
        ]
        frame = frame.drop(columns=std)
    return frame
