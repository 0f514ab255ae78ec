"""Results tables: CSV + Markdown with the settings and the exact command that produced them."""

from __future__ import annotations

import datetime
import pathlib

import pandas as pd

from tempscale_tf.files import atomic_write_text


def write_table(rows, path_stem, command: str, settings: dict, notes=(), floatfmt=".4g") -> str:
    """Write `<path_stem>.csv` and `<path_stem>.md`; return the Markdown.

    The CSV starts with `# key: value` comment lines (command, settings, date); read it back with
    `pandas.read_csv(path, comment="#")`.
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
    md.append(frame.to_markdown(index=False, floatfmt=floatfmt))
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


def mean_std(frame: pd.DataFrame, by, columns, digits=4) -> pd.DataFrame:
    """Group `frame` by `by` and format each column as "mean ± std" (std over the group's rows).

    Also adds `n` (rows per group). A group of one row shows the mean alone.
    """
    out = []
    for key, group in frame.groupby(by, sort=True):
        rec = dict(
            zip([by] if isinstance(by, str) else by, key if isinstance(key, tuple) else (key,))
        )
        rec["n"] = len(group)
        for c in columns:
            if c not in group or group[c].isna().all():
                rec[c] = ""
                continue
            values = group[c].dropna().to_numpy(dtype=float)
            rec[c] = (
                f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
                if len(values) > 1
                else f"{values.mean():.{digits}f}"
            )
        out.append(rec)
    return pd.DataFrame(out)
