"""Store curation as DINOv2 curated LVD-142M: QC, embedding dedup (faiss index), hierarchical k-means
rebalancing -> a curation table the crop sampler reads; search a store by example."""

from cellfm._lazy import lazy_exports

_EXPORTS = {
    "CurateConfig": "config",
    "QCThresholds": "config",
    "curate": "job",
    "duplicate_groups": "dedup",
    "hierarchical_kmeans": "kmeans",
    "balanced_weights": "rebalance",
    "normalised_entropy": "rebalance",
    "read_table": "table",
    "search": "retrieval",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
