"""Run a whole RNC study from a config: read responses, search, test, write, plot.

`run_study` is what the CLI, the Ray Job entry point and the demo call; it returns
the JSON summary it writes to `<out_dir>/summary.json`.
"""

from __future__ import annotations

import posixpath
import time
from typing import Any, Callable, Sequence

import numpy as np

from berg_scale import __version__
from berg_scale.errors import ConfigError
from berg_scale.io.storage import filesystem_for
from berg_scale.rnc.config import StudyConfig, parse_config
from berg_scale.rnc.multivariate import GAParams
from berg_scale.rnc.multivariate_study import (
    MultivariateParams,
    MultivariateResult,
    require_enough_images,
    run_multivariate,
)
from berg_scale.rnc.outputs import (
    KeyResolver, excluded_images, multivariate_tables, univariate_tables, write_json, write_tables,
)
from berg_scale.rnc.rerun import PARTS, carried_parts, keep_parts, read_summary, remove_stale
from berg_scale.rnc.responses import ResponsesError, ResponseStore
from berg_scale.rnc.univariate import CONDITIONS, UnivariateParams, UnivariateResult, run_univariate, train_average


def _log_default(message: str) -> None:
    print(f"[rnc] {message}", flush=True)


def run_study(
    config: StudyConfig, log: Callable[[str], None] = _log_default, allow_auto_ray: bool = False,
    announce_sections: bool = True,
) -> dict:
    """Univariate and/or multivariate RNC as configured; returns the summary.

    The model and the subjects, when the config leaves them out, are those of the
    responses (see `resolve_from_responses`). Distributed univariate selection attaches
    to the Ray named by RAY_ADDRESS (or, with `allow_auto_ray`, the cluster this process
    runs in), else starts a local one.

    A responses output that is still being written, or only partly committed, is studied
    as it is, after one warning line. summary.json records each shard's commit, so that
    the study stays tied to the responses it read; an `out_dir` holding an earlier study
    keeps the entry of the part not computed here while it still matches (`rerun`).
    """
    started = time.time()
    storage = config.storage.options()
    store = ResponseStore(config.responses, storage)
    fs, out_root = filesystem_for(config.out_dir, storage)
    if announce_sections:
        for analysis, state in config.section_states().items():
            if state != "on":
                log(f"{analysis}: {state}")
    config = resolve_from_responses(config, store, log)
    _check_images_folder(config, storage)
    unfinished = store.unfinished_warning()
    if unfinished:
        log(f"warning: {unfinished}")
    pairs = config.roi_pairs()
    rois = sorted({r for p in pairs for r in p}, key=config.rois.index)
    summary: dict = {
        "engine_version": __version__,
        "seed": config.seed,
        "responses": config.responses,
        "config": config.model_dump(mode="json"),
        "shards": list(store.committed_shards()),
        "shard_commits": store.shard_commits(),
        "outputs": [],
    }
    previous = read_summary(fs, out_root)
    parts_run = {part for part in PARTS if getattr(config, part).enabled}
    kept = carried_parts(previous, summary, parts_run, fs, out_root, storage, log)
    if config.univariate.enabled and config.multivariate.enabled:
        # Found now, not after the univariate part has run for minutes.
        require_enough_images(store.image_index().n_images, _ga_params(config))
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
        remove_stale(fs, out_root, "univariate", summary["outputs"], previous, log)
    if config.multivariate.enabled:
        summary["multivariate"] = _multivariate(config, store, fs, out_root, rois, pairs, summary, log)
        remove_stale(fs, out_root, "multivariate", summary["outputs"], previous, log)
    if previous and kept:
        keep_parts(summary, previous, kept, out_root)
    summary["elapsed_s"] = round(time.time() - started, 3)
    write_json(fs, posixpath.join(out_root, "summary.json"), summary)
    log(f"summary written to {posixpath.join(config.out_dir, 'summary.json')}")
    return summary


def _check_images_folder(config: StudyConfig, storage) -> None:
    """Refuse a `plots.images` folder that does not exist before the study runs, not per image after."""
    if not (config.plots.enabled and config.plots.images):
        return
    from berg_scale.rnc.images import images_folder_problem

    problem = images_folder_problem(config.plots.images, storage)
    if problem:
        raise ConfigError(
            f"plots.images (--images): {problem}: give the folder (or s3:// prefix) of the input shards, or "
            "leave it out to read the input tars the _done markers record"
        )


def resolve_from_responses(config: StudyConfig, store: ResponseStore, log: Callable[[str], None]) -> StudyConfig:
    """The config with `model_id` and `subjects` filled in from the responses when left out.

    The model is the one fMRI model in the output (fmri-nsd-fwrf when there are several);
    the subjects are every subject whose columns for all the study's ROIs are there (`:mean`
    columns for univariate RNC, voxel columns for multivariate RNC).
    """
    update: dict = {}
    model_id = config.model_id
    if model_id is None:
        models = store.fmri_models()
        if len(models) == 1:
            model_id = models[0]
        elif "fmri-nsd-fwrf" in models:
            model_id = "fmri-nsd-fwrf"
        elif models:
            raise ResponsesError(
                f"the responses hold several fMRI models ({', '.join(models)}): choose one with model_id "
                "(--model)"
            )
        else:
            raise ResponsesError(
                f"{config.responses!r} has no fMRI response columns (<model>/sub-SS/<ROI>): RNC needs the "
                "responses of an fMRI model (generate with fmri-nsd-fwrf or fmri-nsd_fsaverage-vit_b_32)"
            )
        update["model_id"] = model_id
    if config.subjects is not None:
        store.check_subjects(model_id, config.subjects)
    if config.subjects is None and (config.univariate.enabled or config.multivariate.enabled):
        pairs = config.roi_pairs()
        rois = sorted({r for p in pairs for r in p}, key=config.rois.index)
        kinds = [k for k, on in (("mean", config.univariate.enabled), ("responses", config.multivariate.enabled))
                 if on]
        subjects: set[int] | None = None
        lacking: dict[int, list[str]] = {}
        for kind in kinds:
            complete, missing = store.subjects_with(model_id, rois, config.roi_unions, kind)
            subjects = set(complete) if subjects is None else subjects & set(complete)
            for subject, names in missing.items():
                lacking.setdefault(subject, []).extend(f"{r} ({'mean' if kind == 'mean' else 'voxels'})"
                                                       for r in names)
        chosen = sorted(subjects or [])
        if not chosen:
            found = ", ".join(f"sub-{s:02d} lacks {', '.join(n)}" for s, n in sorted(lacking.items()))
            raise ResponsesError(
                f"no subject of {model_id} has columns for every ROI of the study ({', '.join(rois)}) in "
                f"{config.responses!r}{': ' + found if found else ''}: choose rois that were generated"
            )
        left_out = "; ".join(f"sub-{s:02d} left out, it lacks {', '.join(n)}" for s, n in sorted(lacking.items()))
        log(f"subjects {', '.join(map(str, chosen))} (every subject of {model_id} with these ROIs in the "
            f"responses{'; ' + left_out if left_out else ''}; set subjects (--subjects) to choose)")
        update["subjects"] = chosen
    return config.model_copy(update=update) if update else config


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
    missing: list = []
    if config.plots.enabled:
        written, missing = _univariate_plots(config, data, result, keys, fs, directory, storage, store, log)
        summary["outputs"] += written
    return {
        "images_not_found": missing,
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


UNIVARIATE_UNITS = (
    "Univariate response: the predicted fMRI response averaged over the ROI's voxels with ncsnr > {t:g}, in the "
    "z-units of the training data (NSD betas z-scored per voxel and session), averaged over subjects {subjects}. "
    "↑: at least the margin ({m:g} z) above the ROI's baseline score; ↓: at least the margin below it. Baseline: "
    "the random {k}-image batch whose mean is nearest the mean of {b:,} random batches."
)


def _univariate_plots(config, data, result: UnivariateResult, keys, fs, directory, storage, store, log) -> tuple:
    from berg_scale.rnc.plots import GridPanel, condition_label, save_figure, scatter_figure

    written = []
    slot = {s: i for i, s in enumerate(data.subjects)}
    all_slots = [slot[s] for s in data.subjects]
    excluded = result.exclusions.excluded if result.exclusions else np.empty(0, np.int64)
    u = config.univariate
    units = UNIVARIATE_UNITS.format(t=config.ncsnr_threshold, subjects=", ".join(map(str, data.subjects)),
                                    m=u.margin, k=u.baseline_batch_size, b=u.baseline_batches)
    grids = []
    for pair in result.pairs:
        u1 = train_average(data.values, all_slots, data.roi_index(pair[0]))
        u2 = train_average(data.values, all_slots, data.roi_index(pair[1]))
        u1[excluded] = np.nan  # left out of the study, so not drawn
        u2[excluded] = np.nan
        sets = {s.condition: s.images for s in result.selections if s.fold.heldout is None and s.pair == pair}
        base = {b.roi: b for b in result.baselines if b.fold.heldout is None and b.roi in pair}
        betas = (base[pair[0]].score_train, base[pair[1]].score_train)
        fig = scatter_figure(u1, u2, pair, sets, betas, {r: base[r].images for r in pair}, config.plots.max_points,
                             config.seed, caption=f"Each dot is one image. Dashed lines: baseline scores. {units}")
        stem = posixpath.join(directory, f"scatter_{pair[0]}-{pair[1]}")
        written += save_figure(fig, fs, stem, config.plots.formats)
        panels: list[Any] = []
        for condition in CONDITIONS:
            images = list(sets.get(condition, []))
            tiles = [(int(i), f"{u1[i]:+.2f}/{u2[i]:+.2f}") for i in images]
            note = None if images else (
                f"No image is eligible: none has {condition_label(condition, pair)} by the margin of "
                f"{u.margin:g} z around both baselines.")
            panels.append((condition_label(condition, pair, long=True), tiles, u.n_images, note))
        baselines = [(f"baseline batch of {roi}", [(int(i), f"{(u1 if roi == pair[0] else u2)[i]:+.2f}")
                                                   for i in base[roi].images], u.baseline_batch_size, None)
                     for roi in pair]
        caption = (f"Numbers under each image: its {pair[0]} / {pair[1]} response (z). {units}")
        grids.append((f"images_{pair[0]}-{pair[1]}", f"{pair[0]} vs {pair[1]}: controlling images (all subjects)",
                      panels, caption))
        grids.append((f"baselines_{pair[0]}-{pair[1]}", f"{pair[0]} vs {pair[1]}: baseline images (all subjects)",
                      baselines, f"Number under each image: its response in that ROI (z). {units}"))
    missing: list[Any] = []
    if grids:
        written_grids, missing = _grids(config, grids, keys, fs, directory, store, log, columns=5, per_row=2,
                                        panel_type=GridPanel)
        written += written_grids
    return written, missing


def _grids(config, grids, keys, fs, directory, store, log, columns, per_row, panel_type) -> tuple[list[str], list]:
    """Fetch every image of every grid at once, warn about those not found, then draw."""
    from berg_scale.rnc.images import fetch_thumbnails, locate_sources
    from berg_scale.rnc.plots import image_grid_figure, save_figure

    images = {i for _, _, panels, _ in grids for _, tiles, _, _ in panels for i, _ in tiles}
    wanted = {(keys(i)[1], keys(i)[0]) for i in images}  # (shard, key)
    storage = config.storage.options()
    sources = locate_sources({shard for shard, _ in wanted}, config.responses, config.plots.images, storage)
    if not sources:
        log("image grids skipped: the _done markers record no input shard URLs; give the input shards with "
            "--images (plots.images)")
        return [], []
    fetched = fetch_thumbnails(sources, sorted(wanted), storage, config.plots.tile_size)
    warning = fetched.warning()
    if warning:
        log(f"warning: {warning}")
    written = []
    for name, title, panels, caption in grids:
        drawn = []
        for panel_title, tiles, expected, note in panels:
            cells = []
            for image, score in tiles:
                key, shard, _ = keys(image)
                cells.append((key, fetched.get(shard, key), score))
            drawn.append(panel_type(panel_title, cells, expected, note))
        fig = image_grid_figure(drawn, columns=columns, panels_per_row=per_row, title=title, caption=caption)
        written += save_figure(fig, fs, posixpath.join(directory, name), config.plots.formats)
    missing = [{"shard": shard, "key": key, "reason": reason}
               for (shard, key), reason in sorted(fetched.missing.items())]
    return written, missing


def _ga_params(config: StudyConfig) -> GAParams:
    m = config.multivariate
    return GAParams(population=m.population, batch_size=m.batch_size, generations=m.generations,
                    mutants_per_parent=m.mutants_per_parent, seed=config.seed)


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
        ga=_ga_params(config),
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
    missing: list = []
    if config.plots.enabled:
        written, missing = _multivariate_plots(config, result, keys, fs, directory, store, log)
        summary["outputs"] += written
    return {
        "images_not_found": missing,
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


MULTIVARIATE_UNITS = (
    "RSA score: Pearson r between the two ROIs' representational similarity matrices (RSMs; Pearson r between "
    "the {k} images' response patterns over voxels with ncsnr > {t:g}), over the {pairs:,} image pairs of the "
    "batch. Align maximises it; disentangle drives it to 0."
)


def _multivariate_plots(config, result: MultivariateResult, keys, fs, directory, store, log) -> tuple:
    from berg_scale.rnc.plots import CurveSet, GridPanel, condition_label, generations_figure, save_figure
    from berg_scale.rnc.stats import bootstrap_ci
    from berg_scale.rnc.streams import stream

    m = config.multivariate
    units = MULTIVARIATE_UNITS.format(k=m.batch_size, t=config.ncsnr_threshold,
                                      pairs=m.batch_size * (m.batch_size - 1) // 2)
    n_band = min(m.n_bootstrap, 2000) if m.n_bootstrap else 0
    written, grids = [], []
    for pair in result.pairs:
        curves = []
        finals = {}
        for condition in result.params.conditions:
            runs = [r for r in result.runs if r.pair == pair and r.condition == condition]
            train = next((r for r in runs if r.fold.heldout is None), None)
            if train is None:
                continue
            heldout = {r.fold.label: r.test_scores for r in runs if r.fold.heldout is not None}
            ci = None
            if heldout and n_band:
                table = np.vstack(list(heldout.values()))
                ci = bootstrap_ci(table, n_band, stream(config.seed, "multivariate curve band", pair[0], pair[1],
                                                        condition))
            bases = [b["test_score"] for b in result.baselines
                     if (b["roi_1"], b["roi_2"]) == pair and b["heldout_subject"] is not None]
            null_mean = next((b["null_train_mean"] for b in result.baselines
                              if (b["roi_1"], b["roi_2"]) == pair and b["heldout_subject"] is None), None)
            curves.append(CurveSet(condition, train.search.best_scores, heldout, ci,
                                   float(np.nanmean(bases)) if bases else None, null_mean))
            stat = next((row for row in result.summary if (row["roi_1"], row["roi_2"]) == pair
                         and row["condition"] == condition), None)
            finals[condition] = (train, stat)
        caption = ("Dashed black: the score the search optimises (all subjects' averaged RSMs). Coloured: each "
                   "fold's best batch scored on its held-out subject's RSMs, their mean and 95% bootstrap CI over "
                   "held-out subjects; dotted: the held-out score of the baseline batch. " + units)
        fig = generations_figure(curves, pair, caption=caption)
        written += save_figure(fig, fs, posixpath.join(directory, f"generations_{pair[0]}-{pair[1]}"),
                               config.plots.formats)
        panels = [(f"{condition_label(condition, pair, long=True)}: {_batch_scores(run, stat)}",
                   [(int(i), "") for i in run.search.best_batches[-1]], None, None)
                  for condition, (run, stat) in finals.items()]
        caption = ("Each panel is the final batch of the search on all subjects; its train r is this batch's score "
                   "on all subjects' averaged RSMs. The held-out r is not this batch's: it is the mean over the "
                   "held-out folds, each fold's own final batch (chosen without its left-out subject) scored on "
                   "that subject. " + units)
        grids.append((f"images_{pair[0]}-{pair[1]}",
                      f"{pair[0]} vs {pair[1]}: final batches of the all-subjects search", panels, caption))
    missing: list = []
    if grids:
        written_grids, missing = _grids(config, grids, keys, fs, directory, store, log, columns=10, per_row=1,
                                        panel_type=GridPanel)
        written += written_grids
    return written, missing


def _batch_scores(run, stat: dict | None) -> str:
    """Panel title of an all-subjects batch: its own train score, then the folds' held-out mean, named as such."""
    score = f"train r = {run.search.best_scores[-1]:+.3f} (this batch, all subjects)"
    if stat is None:
        return score
    return (f"{score}; mean over held-out folds (their own batches) r = {stat['mean_score']:+.3f} vs baseline "
            f"{stat['mean_baseline']:+.3f}, significant in {stat['n_significant']}/{stat['n_subjects']}")


def run_demo_rnc(
    output_url: str,
    out_dir: str,
    rois: Sequence[str] = ("V1", "hV4"),
    subjects: Sequence[int] | None = None,
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
            "subjects": list(subjects) if subjects else None,
            "rois": list(rois),
            "univariate": {"baseline_batches": 20_000, "n_bootstrap": 2_000, "n_permutations": 2_000},
            "multivariate": {"enabled": multivariate, "generations": generations, "population": 50,
                             "baseline_batches": 3_000, "n_bootstrap": 2_000, "n_permutations": 1_000,
                             "log_every": max(1, generations // 4)},
            "plots": {"images": images_url},
        },
        "demo RNC settings",
    )
    return run_study(config, log)
