"""Response-space search: the images whose predicted pattern is nearest a target pattern.

    columns      which response columns form the searched vector, read shard by shard
    target       the target vector: a .npy/.csv file or an image's own response (--like)
    metrics      euclidean, cosine and correlation distances (float64)
    topk         the running k nearest, merged one shard at a time
    scan         counts of images read, skipped (non-finite), undefined, excluded
    exact        exact search: one streaming pass, memory independent of N
    ann          approximate search through a faiss HNSW index (optional dependency)
    index_store  saving an ANN index and reusing it while it matches the output
    nearest      one search end to end (`find_nearest`)
    grid         the image grid of the results
    outputs      results.parquet, summary.json, grid.png
"""

from berg_scale.search.errors import SearchError
from berg_scale.search.nearest import SearchRequest, SearchResult, find_nearest

__all__ = ["SearchError", "SearchRequest", "SearchResult", "find_nearest"]
