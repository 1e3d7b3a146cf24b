"""scanpy neighbours, Leiden clusters and UMAP on a chosen representation."""

from __future__ import annotations


def cluster(
    adata,
    use_rep: str = "X",
    n_neighbors: int = 15,
    resolution: float = 1.0,
    umap: bool = True,
    seed: int = 0,
    key_added: str = "leiden",
):
    """`sc.pp.neighbors` + `sc.tl.leiden` (igraph) + `sc.tl.umap` in place; returns `adata`."""
    import scanpy as sc

    if use_rep != "X" and use_rep not in adata.obsm:
        raise KeyError(f"no representation {use_rep!r} in obsm (has {sorted(adata.obsm)})")
    if adata.n_obs < 3:
        raise ValueError(f"clustering needs at least 3 rows, got {adata.n_obs}")
    k = max(2, min(n_neighbors, adata.n_obs - 1))
    sc.pp.neighbors(adata, n_neighbors=k, use_rep=use_rep, random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed, key_added=key_added)  # fmt: skip
    if umap:
        sc.tl.umap(adata, random_state=seed)
    adata.uns.setdefault("cellfm_analysis", {})["cluster"] = {
        "use_rep": use_rep, "n_neighbors": k, "resolution": resolution, "seed": seed}  # fmt: skip
    return adata
