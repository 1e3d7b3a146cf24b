"""The whole analysis a profiling scientist expects, in one call: normalise to controls per plate, cluster,
aggregate per well, score (kNN / linear probe / phenotypic-activity mAP) and plot."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .aggregate import aggregate_wells
from .cluster import cluster
from .metrics import knn_accuracy, linear_probe_accuracy, phenotypic_activity
from .normalize import METHODS, normalize_to_controls
from .representation import control_mask, get_rep

log = logging.getLogger(__name__)


def analyze(
    adata,
    controls: str | Sequence[str] | None = None,
    *,
    methods: Sequence[str] = METHODS,
    use_rep: str | None = None,
    aggregate: str = "mean",
    label: str | None = None,
    treatment: str = "treatment",
    plots_dir: str | os.PathLike | None = None,
    patch_features: str | os.PathLike | None = None,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    null_size: int = 1000,
    seed: int = 0,
) -> tuple[Any, Any, dict[str, Any]]:
    """Returns (rows with obsm normalisations / leiden / UMAP, per-well AnnData, metrics dict)."""
    report: dict[str, Any] = {}
    has_controls = controls is not None or any(c in adata.obs for c in ("control", "is_control"))
    if has_controls:
        ctrl = control_mask(adata, controls)
        report["n_controls"] = int(ctrl.sum())
        for method in methods:
            normalize_to_controls(adata, method, ctrl)
    elif methods:
        log.warning("no controls (no --controls and no 'control' column): embeddings are not normalised")
    rep = use_rep or ("X_standardize" if "X_standardize" in adata.obsm else "X")
    report["use_rep"] = rep
    cluster(adata, rep, n_neighbors=n_neighbors, resolution=resolution, seed=seed)
    report["n_clusters"] = int(adata.obs["leiden"].nunique())
    wells = aggregate_wells(adata, aggregate)
    if label is not None:
        if label not in adata.obs:
            raise KeyError(f"no label column {label!r} in obs (columns: {list(adata.obs.columns)})")
        x, y = get_rep(adata, rep), adata.obs[label].astype(str).to_numpy()
        report["knn_accuracy"] = knn_accuracy(x, y, seed=seed)
        report["linear_probe_accuracy"] = linear_probe_accuracy(x, y, seed=seed)
    if has_controls and treatment in wells.obs:
        wctrl = control_mask(wells, controls)
        try:
            act = phenotypic_activity(get_rep(wells, rep), wells.obs[treatment].to_numpy(), wctrl,
                                      null_size=null_size, seed=seed)  # fmt: skip
        except ValueError as err:
            log.warning("phenotypic activity skipped: %s", err)
        else:
            report["phenotypic_activity"] = {
                str(t): {"mAP": float(m), "corrected_p": float(p), "active": bool(a), "p_value_floor": float(f)}
                for t, m, p, a, f in zip(act["treatment"], act["mAP"], act["corrected_p_value"], act["active"],
                                         act["p_value_floor"])
            }  # fmt: skip
            report["fraction_active"] = float(np.mean(act["active"]))
            report["map_p_value_floor"] = float(act["p_value_floor"].max())
            if report["map_p_value_floor"] > 0.01:
                small = act.loc[act["p_value_floor"] > 0.01, ["treatment", "p_value_floor"]]
                log.warning(
                    "phenotypic activity: with %d control wells, %d of %d treatments have too few replicates for a "
                    "p-value below 0.01 (smallest possible p: %s); copairs' p-values and 'active' flags for them "
                    "are not evidence; add replicates or controls", int(wctrl.sum()), len(small), len(act),
                    ", ".join(f"{t} {f:.3g}" for t, f in zip(small["treatment"], small["p_value_floor"])),
                )  # fmt: skip
    adata.uns.setdefault("cellfm_analysis", {})["metrics"] = _flat(report)
    wells.uns["cellfm_analysis"] = {"metrics": _flat(report)}
    if plots_dir is not None:
        from .plots import plot_patch_pca, plot_umap

        files = plot_umap(adata, plots_dir, colors=("well", treatment, "plate", "leiden"))
        if patch_features is not None:
            files += plot_patch_pca(patch_features, plots_dir)
        report["plots"] = [str(f) for f in files]
    return adata, wells, report


def _flat(report: dict[str, Any]) -> dict[str, Any]:
    """The report without nested per-treatment dicts keyed by arbitrary names (kept as JSON text)."""
    import json

    return {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in report.items()}
