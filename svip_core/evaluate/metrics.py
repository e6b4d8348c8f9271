"""Ranking metrics with bootstrap confidence intervals, overall and per group."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from svip_core.model.ranking import hit_at_k, reciprocal_rank, target_rank_stats


def per_clip_hits(scores: np.ndarray, target: np.ndarray, present: np.ndarray, ks: list[int]) -> pd.DataFrame:
    """One row per clip: cmc@k for each k (top-1 is cmc@1) and rr (reciprocal rank), tie-aware; a clip whose
    target is absent scores 0 in every column (a miss), so it lowers the figures instead of leaving them."""
    above, tied = target_rank_stats(torch.as_tensor(scores), torch.as_tensor(target), torch.as_tensor(present))
    cols = {f"cmc@{k}": hit_at_k(above, tied, k).numpy() for k in ks}
    cols["rr"] = reciprocal_rank(above, tied).numpy()
    return pd.DataFrame(cols)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling clips."""
    if len(values) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(values), (n_boot, len(values)))
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(hits: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """{metric: {mean, ci95, n}} with top1 and mrr named as such."""
    out = {}
    for col in hits.columns:
        name = {"cmc@1": "top1", "rr": "mrr"}.get(col, col)
        values = hits[col].to_numpy(dtype=np.float64)
        out[name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                     "ci95": list(bootstrap_ci(values, n_boot, seed)), "n": int(len(values))}
    return out


def format_interval(summary: dict) -> str:
    """One metric of ``summarise`` as read in reports: ``0.71 [0.58, 0.83]``."""
    return f"{summary['mean']:.2f} [{summary['ci95'][0]:.2f}, {summary['ci95'][1]:.2f}]"


def people_buckets(count: np.ndarray, most: int = 4) -> tuple[np.ndarray, list[str]]:
    """count (V,) people present per clip -> (V,) bucket label per clip, and the labels in ascending order.

    One bucket per count when there are at most ``most`` distinct counts; else ``most`` ranges cut at the counts'
    quantiles, so each holds about as many clips ("2-3", "4", "5-7", "8-12"). Fixed buckets (the reference's
    <=2, 3, 4, >=5) put a dataset of 6 to 12 people in one bar."""
    count = np.asarray(count, dtype=np.int64)
    values = np.unique(count)
    uppers = values if len(values) <= most else \
        np.unique(np.quantile(count, np.arange(1, most + 1) / most, method="inverted_cdf")).astype(np.int64)
    index = np.searchsorted(uppers, count, side="left")                               # count <= uppers[index]
    names = []
    for i in range(len(uppers)):
        inside = count[index == i]
        lo, hi = int(inside.min()), int(inside.max())
        names.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return np.array(names, dtype=object)[index], names
