"""Run a whole RNC study from a config: read responses, search, test, write, plot.

`run_study` is what the CLI, the Ray Job entry point and the demo call; it returns
the JSON summary it writes to `<out_dir>/summary.json`.
"""

from __future__ import annotations

import posixpath
import time
from typing import Callable, Sequence

import numpy as np

from berg_scale import __version__
from berg_scale.io.storage import filesystem_for
from berg_scale.rnc.config import StudyConfig, parse_config
from berg_scale.rnc.multivariate import GAParams
from berg_scale.rnc.multivariate_study import MultivariateParams, MultivariateResult, run_multivariate
from berg_scale.rnc.outputs import (
    KeyResolver, excluded_images, multivariate_tables, univariate_tables, write_json, write_tables,
)
from berg_scale.rnc.responses import ResponseStore
from berg_scale.rnc.univariate import CONDITIONS, UnivariateParams, UnivariateResult, run_univariate, train_average


def _log_default(message: str) -> None:
    print(f"[rnc] {message}", flush=True)


def run_study(
    config: StudyConfig, log: Callable[[str], None] = _log_default, allow_auto_ray: bool = False
) -> dict:
    """Univariate and/or multivariate RNC as configured; returns the summary.

    Distributed univariate selection attaches to the Ray named by RAY_ADDRESS (or, with
    `allow_auto_ray`, the cluster this process runs in), else starts a local one.
    """
    started = time.time()
    storage = config.storage.options()
    store = ResponseStore(config.responses, storage)
    fs, out_root = filesystem_for(config.out_dir, storage)
    pairs = config.roi_pairs()
    rois = sorted({r for p in pairs for r in p}, key=config.rois.index)
    summary: dict = {
        "engine_version": __version__,
        "seed": config.seed,
        "responses": config.responses,
        "config": config.model_dump(mode="json"),
        "shards": list(store.committed_shards()),
        "outputs": [],
    }
    if config.univariate.enabled:
        started_ray = False
        if config.univariate.distributed:
            from berg_scale.engine.ray_connect import ensure_ray

            started_ray = ensure_ray(allow_auto=allow_auto_ray)
        try:
            summary["univariate"] = _univariate(config, store, storage, fs, out_root, rois, pairs, summary, log)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    if config.multivariate.enabled:
        summary["multivariate"] = _multivariate(config, store, fs, out_root, rois, pairs, summary, log)
    summary["elapsed_s"] = round(time.time() - started, 3)
    write_json(fs, posixpath.join(out_root, "summary.json"), summary)
    log(f"summary written to {posixpath.join(config.out_dir, 'summary.json')}")
    return summary


def _univariate(config, store, storage, fs, out_root, rois, pairs, summary, log) -> dict:
    u = config.univariate
    log(f"univariate: reading {len(config.subjects)} subjects x {len(rois)} ROIs (:mean columns)")
    data = store.read_univariate(config.model_id, config.subjects, rois, config.roi_unions, config.ncsnr_threshold)
    summary["n_images"] = data.images.n_images
    params = UnivariateParams(
        n_images=u.n_images, margin=u.margin, baseline_batches=u.baseline_batches,
        baseline_batch_size=u.baseline_batch_size, n_bootstrap=u.n_bootstrap, n_permutations=u.n_permutations,
        alpha=u.alpha, chance=u.chance, seed=config.seed, max_excluded_fraction=config.max_excluded_fraction,
    )
    selector = None
    if u.distributed:
        from berg_scale.rnc.distributed import ray_selector

        columns, plan = store.univariate_plan(config.model_id, config.subjects, rois, config.roi_unions,
                                              config.ncsnr_threshold)
        selector = ray_selector(store, storage, data.images, columns, plan, data.subjects, data.rois,
                                u.n_images, u.margin)
    result = run_univariate(data.values, data.subjects, data.rois, pairs, params, config.cross_validation,
                            selector, log)
    wanted = [i for s in result.selections for i in s.images] + [i for b in result.baselines for i in b.images]
    keys = KeyResolver(store, data.images, wanted + excluded_images(result.exclusions))
    directory = posixpath.join(out_root, "univariate")
    summary["outputs"] += write_tables(fs, directory, univariate_tables(result, keys))
    if config.plots.enabled:
        summary["outputs"] += _univariate_plots(config, data, result, keys, fs, directory, storage)
    return {
        "params": params.__dict__,
        "exclusions": result.exclusions.summary() if result.exclusions is not None else None,
        "baselines": [
            {"roi": b.roi, "fold": b.fold.label, "score_train": b.score_train, "score_test": b.score_test,
             "null_mean": b.null_mean, "batch": b.batch_index}
            for b in result.baselines
        ],
        "n_controlling": [
            {"roi_1": s.pair[0], "roi_2": s.pair[1], "condition": s.condition, "fold": s.fold.label,
             "n": int(s.images.size)}
            for s in result.selections
        ],
        "statistics": result.summary,
        "correlations": result.correlations,
    }


def _univariate_plots(config, data, result: UnivariateResult, keys, fs, directory, storage) -> list[str]:
    from berg_scale.rnc.plots import save_figure, scatter_figure

    written = []
    slot = {s: i for i, s in enumerate(data.subjects)}
    all_slots = [slot[s] for s in data.subjects]
    excluded = result.exclusions.excluded if result.exclusions else np.empty(0, np.int64)
    for pair in result.pairs:
        u1 = train_average(data.values, all_slots, data.roi_index(pair[0]))
        u2 = train_average(data.values, all_slots, data.roi_index(pair[1]))
        u1[excluded] = np.nan  # left out of the study, so not drawn
        u2[excluded] = np.nan
        sets = {s.condition: s.images for s in result.selections if s.fold.heldout is None and s.pair == pair}
        base = {b.roi: b for b in result.baselines if b.fold.heldout is None and b.roi in pair}
        fig = scatter_figure(u1, u2, pair, sets, (base[pair[0]].score_train, base[pair[1]].score_train),
                             {r: base[r].images for r in pair}, config.plots.max_points, config.seed)
        stem = posixpath.join(directory, f"scatter_{pair[0]}-{pair[1]}")
        written += save_figure(fig, fs, stem, config.plots.formats)
        if config.plots.images:
            rows = {c: list(sets.get(c, [])) for c in CONDITIONS}
            rows.update({f"baseline {r}": list(base[r].images) for r in pair})
            written += _grid(config, rows, keys, fs, posixpath.join(directory, f"images_{pair[0]}-{pair[1]}"),
                             storage, f"{pair[0]} vs {pair[1]} (all subjects)")
    return written


def _grid(config, rows: dict, keys, fs, stem: str, storage, title: str) -> list[str]:
    from berg_scale.rnc.images import fetch_images
    from berg_scale.rnc.plots import image_grid_figure, save_figure

    located = {label: [keys(i) for i in images] for label, images in rows.items()}
    wanted = {(shard, key) for items in located.values() for key, shard, _ in items}
    fetched = fetch_images(config.plots.images, wanted, config.storage.options(), config.plots.tile_size)
    grid = {label: [(key, fetched.get(key)) for key, _, _ in items] for label, items in located.items()}
    return save_figure(image_grid_figure(grid, config.plots.tile_size, title), fs, stem, config.plots.formats)


def _multivariate(config, store, fs, out_root, rois, pairs, summary, log) -> dict:
    from berg_scale.rnc.patterns import PatternSet, resolve_device

    m = config.multivariate
    device = resolve_device(m.device)
    images = store.image_index()
    patterns = {}
    for roi in rois:
        columns = {
            s: store.pattern_columns(config.model_id, s, roi, config.roi_unions, config.ncsnr_threshold)
            for s in config.subjects
        }
        dims = [int(sum(mask.sum() for _, mask in columns[s])) for s in config.subjects]
        pattern_set = PatternSet.allocate(config.subjects, images.n_images, dims, device, m.storage_dtype)
        for subject in config.subjects:
            # shard by shard: raw voxel responses of all images are never held at once
            for j, (_, block) in enumerate(store.iter_patterns(columns[subject])):
                pattern_set.fill(subject, int(images.offsets[j]), block)
        patterns[roi] = pattern_set
        log(f"multivariate: {roi} patterns {images.n_images:,} images x {pattern_set.dims} voxels on {device}")
    summary.setdefault("n_images", images.n_images)
    params = MultivariateParams(
        ga=GAParams(population=m.population, batch_size=m.batch_size, generations=m.generations,
                    mutants_per_parent=m.mutants_per_parent, seed=config.seed),
        conditions=tuple(m.conditions), baseline_batches=m.baseline_batches, n_bootstrap=m.n_bootstrap,
        n_permutations=m.n_permutations, alpha=m.alpha, chance=m.chance, chunk=m.chunk, log_every=m.log_every,
        max_excluded_fraction=config.max_excluded_fraction,
    )
    result = run_multivariate(patterns, pairs, params, config.cross_validation, log)
    wanted = [i for r in result.runs for i in r.search.best_batches[-1]] + [
        i for b in result.baselines for i in b["images"]
    ]
    keys = KeyResolver(store, images, wanted + excluded_images(result.exclusions))
    directory = posixpath.join(out_root, "multivariate")
    summary["outputs"] += write_tables(fs, directory, multivariate_tables(result, keys))
    if config.plots.enabled:
        summary["outputs"] += _multivariate_plots(config, result, keys, fs, directory)
    return {
        "device": str(device),
        "exclusions": result.exclusions.summary() if result.exclusions is not None else None,
        "final": [
            {"roi_1": r.pair[0], "roi_2": r.pair[1], "condition": r.condition, "fold": r.fold.label,
             "train_score": float(r.search.best_scores[-1]), "test_score": float(r.test_scores[-1])}
            for r in result.runs
        ],
        "baselines": [{k: v for k, v in b.items() if k != "images"} for b in result.baselines],
        "statistics": result.summary,
    }


def _multivariate_plots(config, result: MultivariateResult, keys, fs, directory) -> list[str]:
    from berg_scale.rnc.plots import generations_figure, save_figure

    written = []
    for pair in result.pairs:
        curves = {}
        for run in result.runs:
            if run.pair != pair:
                continue
            if run.fold.heldout is None:
                curves[f"{run.condition} (all subjects, train)"] = run.search.best_scores
        null_mean = next((b["null_train_mean"] for b in result.baselines
                          if (b["roi_1"], b["roi_2"]) == pair and b["heldout_subject"] is None), None)
        fig = generations_figure(curves, f"Multivariate RNC: {pair[0]} vs {pair[1]}", null_mean)
        written += save_figure(fig, fs, posixpath.join(directory, f"generations_{pair[0]}-{pair[1]}"),
                               config.plots.formats)
        if config.plots.images:
            rows = {r.condition: list(r.search.best_batches[-1]) for r in result.runs
                    if r.pair == pair and r.fold.heldout is None}
            written += _grid(config, rows, keys, fs, posixpath.join(directory, f"images_{pair[0]}-{pair[1]}"),
                             config.storage.options(), f"{pair[0]} vs {pair[1]} (all subjects)")
    return written


def run_demo_rnc(
    output_url: str,
    out_dir: str,
    rois: Sequence[str] = ("V1", "hV4"),
    subjects: Sequence[int] = (1, 2, 3),
    generations: int = 20,
    images_url: str | None = None,
    model_id: str = "fmri-nsd-fwrf",
    multivariate: bool = True,
    log: Callable[[str], None] = _log_default,
) -> dict:
    """A quick study on a demo output: the published procedure with small sample counts.

    Null sizes, bootstrap and permutation counts and the GA population are reduced so
    that it runs in seconds on a laptop; everything else (margin, 25 images, folds,
    batch size 50, mutation sizes) is as published.
    """
    config = parse_config(
        {
            "responses": output_url,
            "out_dir": out_dir,
            "model_id": model_id,
            "subjects": list(subjects),
            "rois": list(rois),
            "cross_validation": len(subjects) > 1,
            "univariate": {"baseline_batches": 20_000, "n_bootstrap": 2_000, "n_permutations": 2_000},
            "multivariate": {"enabled": multivariate, "generations": generations, "population": 50,
                             "baseline_batches": 3_000, "n_bootstrap": 2_000, "n_permutations": 1_000,
                             "log_every": max(1, generations // 4)},
            "plots": {"images": images_url},
        },
        "demo RNC settings",
    )
    return run_study(config, log)
