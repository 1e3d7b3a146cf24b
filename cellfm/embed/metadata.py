"""Well metadata from a CSV (treatment, concentration, control flag, ...) joined onto `obs`."""

from __future__ import annotations

import os

import pandas as pd

from cellfm.data.plates import well_name

RESERVED = ("row", "column", "field", "cell_id", "source")
CONTROL_COLUMNS = ("control", "is_control")
_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f", ""}


def read_well_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The CSV with a `well` column (A1, A01 or A/1) and optionally `plate`; one row per well."""
    try:
        df = pd.read_csv(path, dtype={"well": str, "plate": str}, keep_default_na=False, na_values=[""])
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read well metadata CSV ({err})") from err
    if "well" not in df.columns:
        raise KeyError(f"{path}: well metadata needs a 'well' column; found columns {list(df.columns)}")
    clash = [c for c in RESERVED if c in df.columns]
    if clash:
        raise ValueError(f"{path}: columns {clash} are set by cellfm embed; rename them in the CSV")
    df["well"] = [well_name(str(w)) for w in df["well"]]
    keys = ["plate", "well"] if "plate" in df.columns else ["well"]
    dup = df[df.duplicated(keys, keep=False)]
    if len(dup):
        raise ValueError(
            f"{path}: wells listed more than once: {dup[keys].drop_duplicates().values.tolist()[:10]}"
        )
    for col in CONTROL_COLUMNS:
        if col in df.columns:
            df[col] = [_flag(v, path, col) for v in df[col]]
    return df


def _flag(value, path, col: str) -> bool:
    text = "" if pd.isna(value) else str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{path}: column {col!r} holds {value!r}; expected true/false, 1/0 or yes/no")


def check_wells(meta: pd.DataFrame, wells: list[tuple[str, str]], path: str | os.PathLike) -> None:
    """Every (plate, well) embedded must have a metadata row; the error lists the missing ones."""
    by_plate = "plate" in meta.columns
    have = set(zip(meta["plate"], meta["well"])) if by_plate else set(meta["well"])
    missing = sorted({(p, w) for p, w in wells if ((p, w) if by_plate else w) not in have})
    if missing:
        shown = [f"{p}/{w}" if by_plate else w for p, w in missing[:10]]
        raise KeyError(f"{path}: no metadata row for wells {shown}{' ...' if len(missing) > 10 else ''} "
                       f"(the CSV lists {len(meta)} wells)")  # fmt: skip


def join_metadata(obs: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """`obs` with the metadata columns added (row order and index kept)."""
    keys = ["plate", "well"] if "plate" in meta.columns else ["well"]
    left = obs[keys].astype(str).reset_index(drop=True)
    joined = left.merge(meta, on=keys, how="left", validate="many_to_one")
    out = obs.copy()
    for col in meta.columns:
        if col in keys:
            continue
        values = joined[col].values
        out[col] = pd.Categorical(values) if joined[col].dtype == object else values
    return out
