"""A vectorised re-implementation of COCOeval's bbox AP (area "all", maxDets 100) giving the same numbers, faster.

COCO's rules, reproduced exactly:
- per image and category, detections sorted by score (stable), only the first 100 kept;
- ground truths: crowd (or out-of-area-range) boxes are "ignored"; a crowd box's IoU uses the detection's area
  as the union and it may absorb any number of detections;
- greedy matching at each IoU threshold: a detection takes the unmatched non-ignored GT with the highest IoU
  (>= threshold; ties go to the later GT), and only if there is none, an ignored one; matched-to-ignored and
  unmatched out-of-range detections do not count;
- per category, detections of all images are ranked by score (ties: image id order, then per-image rank),
  precision is made monotone and sampled at 101 recall points; categories without non-ignored GT are skipped.

Here every (image, category) group is matched at once: the loop runs over detection rank (<= 100) and all
groups and IoU thresholds are processed together as arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .scoring import (AREA_ALL, IOU_THRESHOLDS, MAX_DETS, RECALL_THRESHOLDS, Detections, ScoreResult,
                      per_class_from_precision, summary_from_precision)

_CHUNK_ELEMENTS = 4_000_000     # bound on groups × dets × gts per matching chunk (memory)


@dataclass
class Matches:
    """A detection set matched once against the GT: what COCO's AP needs, so that any multiset of the images (a
    bootstrap draw) can be scored again without matching again. Detections are those kept (top `max_dets` per image
    and category); `image` indexes the scorer's sorted image ids."""

    image: np.ndarray      # (n,) image index
    category: np.ndarray   # (n,) category index
    score: np.ndarray      # (n,)
    rank: np.ndarray       # (n,) rank inside its (image, category) group
    tp: np.ndarray         # (n, T) bool: matched to a non-ignored GT
    fp: np.ndarray         # (n, T) bool: unmatched and not ignored
    npig: np.ndarray       # (images, categories): non-ignored GT boxes

    @cached_property
    def _by_image(self) -> List[np.ndarray]:
        """Each image's detection indices (in their order here), built once for all the draws."""
        order = np.argsort(self.image, kind="stable")
        bounds = np.searchsorted(self.image[order], np.arange(len(self.npig) + 1))
        return [order[bounds[k]:bounds[k + 1]] for k in range(len(self.npig))]

    def take_images(self, picks: np.ndarray) -> "Matches":
        """The matches of the images `picks` (indices, repeats allowed), each copy a distinct image numbered by its
        position in `picks`, as if GT and detections had been duplicated and matched again."""
        parts = [self._by_image[k] for k in picks]
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        image = np.repeat(np.arange(len(picks)), [len(p) for p in parts])
        return Matches(image, self.category[idx], self.score[idx], self.rank[idx], self.tp[idx], self.fp[idx],
                       self.npig[picks])


def box_iou_xywh(dt: np.ndarray, gt: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of [x, y, w, h] boxes (…, D, 4) vs (…, G, 4) as pycocotools computes it (crowd: union = det area)."""
    dx, dy, dw, dh = (dt[..., :, None, k] for k in range(4))
    gx, gy, gw, gh = (gt[..., None, :, k] for k in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    d_area, g_area = dw * dh, gw * gh
    union = np.where(gt_crowd[..., None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _last_argmax(values: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Along the last axis: (any masked?, index of the LAST masked element holding the masked maximum)."""
    v = np.where(mask, values, -np.inf)
    best = v.max(axis=-1, keepdims=True)
    hit = mask & (v == best)
    last = hit.shape[-1] - 1 - np.argmax(hit[..., ::-1], axis=-1)
    return mask.any(axis=-1), last


class FastCocoScorer:
    """COCO bbox AP50-95 / AP50 equal to pycocotools' COCOeval (to float rounding); GT prepared once."""

    def __init__(self, gt: dict, image_ids: Optional[Sequence[int]] = None, max_dets: int = MAX_DETS):
        self.max_dets = max_dets
        self.cat_ids = np.unique([c["id"] for c in gt["categories"]]).astype(np.int64)
        all_img = [im["id"] for im in gt["images"]]
        self.image_ids = np.unique(np.asarray(image_ids if image_ids is not None else all_img, dtype=np.int64))
        self.n_cat = len(self.cat_ids)
        anns = gt["annotations"]
        img = np.array([a["image_id"] for a in anns], dtype=np.int64)
        cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
        keep = np.isin(img, self.image_ids) & np.isin(cat, self.cat_ids)
        idx = np.nonzero(keep)[0]
        box = np.array([anns[i]["bbox"] for i in idx], dtype=np.float64).reshape(-1, 4)
        area = np.array([anns[i]["area"] for i in idx], dtype=np.float64)
        crowd = np.array([bool(anns[i].get("iscrowd", 0)) for i in idx], dtype=bool)
        ignore = crowd | (area < AREA_ALL[0]) | (area > AREA_ALL[1])
        group = self._group(img[idx], cat[idx])
        # COCO orders a group's GTs as in the annotation list, then stably puts ignored ones last
        order = np.lexsort((np.arange(len(idx)), ignore, group))
        self.g_group, self.g_box = group[order], box[order]
        self.g_crowd, self.g_ignore = crowd[order], ignore[order]
        self.npig = np.bincount(self.g_group[~self.g_ignore], minlength=len(self.image_ids) * self.n_cat
                                ).reshape(len(self.image_ids), self.n_cat)   # per image and category

    def _group(self, img: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """(image, category) → group id image_rank * K + category_rank (both sorted as COCOeval sorts them)."""
        return np.searchsorted(self.image_ids, img) * self.n_cat + np.searchsorted(self.cat_ids, cat)

    # ------------------------------------------------------------------------------------------------- matching
    def _match(self, d_group: np.ndarray, d_box: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(matched, matched-to-ignored) per detection and IoU threshold, shape (n, T)."""
        n_t = len(IOU_THRESHOLDS)
        thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
        matched = np.zeros((len(d_group), n_t), dtype=bool)
        ignored = np.zeros((len(d_group), n_t), dtype=bool)
        groups, g_start, g_count = np.unique(self.g_group, return_index=True, return_counts=True)
        dgroups, d_start, d_count = np.unique(d_group, return_index=True, return_counts=True)
        both, gi, di = np.intersect1d(groups, dgroups, assume_unique=True, return_indices=True)
        if not len(both):
            return matched, ignored
        gs, gn, ds, dn = g_start[gi], g_count[gi], d_start[di], d_count[di]
        order = np.argsort(gn * dn, kind="stable")      # similar sizes together: less padding
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order):
                size = (stop + 1 - start) * dn[order[start:stop + 1]].max() * gn[order[start:stop + 1]].max()
                if size > _CHUNK_ELEMENTS:
                    break
                stop += 1
            sel = order[start:stop]
            self._match_chunk(gs[sel], gn[sel], ds[sel], dn[sel], d_box, thr, matched, ignored)
            start = stop
        return matched, ignored

    def _match_chunk(self, gs, gn, ds, dn, d_box, thr, matched, ignored) -> None:
        """Greedy COCO matching for a chunk of groups, vectorised over groups and thresholds."""
        m, n_t = len(gs), len(thr)
        dmax, gmax = int(dn.max()), int(gn.max())
        d_valid = np.arange(dmax)[None, :] < dn[:, None]
        g_valid = np.arange(gmax)[None, :] < gn[:, None]
        d_idx = np.where(d_valid, ds[:, None] + np.arange(dmax)[None, :], 0)
        g_idx = np.where(g_valid, gs[:, None] + np.arange(gmax)[None, :], 0)
        crowd, gign = self.g_crowd[g_idx] & g_valid, self.g_ignore[g_idx]
        ious = box_iou_xywh(d_box[d_idx], self.g_box[g_idx], crowd)        # (m, D, G)
        ious = np.where(g_valid[:, None, :], ious, -1.0)
        gt_taken = np.zeros((m, n_t, gmax), dtype=bool)
        rows = np.arange(m)[:, None].repeat(n_t, 1)
        cols = np.arange(n_t)[None, :].repeat(m, 0)
        for d in range(dmax):
            iou = ious[:, d, None, :]                                           # (m, 1, G)
            cand = (~gt_taken | crowd[:, None, :]) & (iou >= thr[None, :, None]) & d_valid[:, d, None, None]
            has_reg, best_reg = _last_argmax(np.broadcast_to(iou, cand.shape), cand & ~gign[:, None, :])
            has_ign, best_ign = _last_argmax(np.broadcast_to(iou, cand.shape), cand & gign[:, None, :])
            hit = has_reg | has_ign                                             # (m, T)
            g = np.where(has_reg, best_reg, best_ign)
            gt_taken[rows[hit], cols[hit], g[hit]] = True
            det = d_idx[:, d]
            matched[det[:, None].repeat(n_t, 1)[hit], cols[hit]] = True
            ignored[det[:, None].repeat(n_t, 1)[hit], cols[hit]] = gign[rows[hit], g[hit]]

    # -------------------------------------------------------------------------------------------------- scoring
    def match(self, dets: Detections) -> Matches:
        """Match `dets` against the GT (the expensive half of `precision`)."""
        keep = np.isin(dets.image_id, self.image_ids) & np.isin(dets.category_id, self.cat_ids)
        d_group = self._group(dets.image_id[keep], dets.category_id[keep])
        d_score, d_box = dets.score[keep], dets.bbox[keep]
        # rank inside each (image, category) group by score, stable; keep the first max_dets
        order = np.lexsort((np.arange(len(d_group)), -d_score, d_group))
        d_group, d_score, d_box = d_group[order], d_score[order], d_box[order]
        starts = np.searchsorted(d_group, d_group, side="left")
        rank = np.arange(len(d_group)) - starts
        top = rank < self.max_dets
        d_group, d_score, d_box, rank = d_group[top], d_score[top], d_box[top], rank[top]

        matched, ignored = self._match(d_group, d_box)
        d_area = d_box[:, 2] * d_box[:, 3]
        out_of_range = (d_area < AREA_ALL[0]) | (d_area > AREA_ALL[1])
        ignored |= ~matched & out_of_range[:, None]
        return Matches(d_group // self.n_cat, d_group % self.n_cat, d_score, rank, matched & ~ignored,
                       ~matched & ~ignored, self.npig)

    def precision_of(self, m: Matches) -> np.ndarray:
        """COCOeval's precision array (T, R, K) of matched detections, -1 where undefined."""
        n_t, n_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
        precision = -np.ones((n_t, n_r, self.n_cat))
        npig = m.npig.sum(axis=0)
        # per category: all images' detections ranked by score (ties: image order, then rank in the image)
        order = np.lexsort((m.rank, m.image, -m.score, m.category))
        d_cat = m.category[order]
        tps, fps = m.tp[order].T, m.fp[order].T
        bounds = np.searchsorted(d_cat, np.arange(self.n_cat + 1))
        for k in np.nonzero(npig)[0]:
            lo, hi = bounds[k], bounds[k + 1]
            q = np.zeros((n_t, n_r))
            if hi > lo:
                tp = np.cumsum(tps[:, lo:hi], axis=1).astype(float)
                fp = np.cumsum(fps[:, lo:hi], axis=1).astype(float)
                rc = tp / npig[k]
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]       # monotone from the right
                for t in range(n_t):
                    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    ok = inds < (hi - lo)
                    q[t, ok] = pr[t, inds[ok]]
            precision[:, :, k] = q
        return precision

    def precision(self, dets: Detections) -> np.ndarray:
        """COCOeval's precision array for area 'all' and maxDets 100: (T, R, K), -1 where undefined."""
        return self.precision_of(self.match(dets))

    def score(self, dets: Detections, per_class: bool = False) -> ScoreResult:
        """mAP50-95 and mAP50 (COCOeval stats[0], stats[1]) and optionally per-category APs."""
        precision = self.precision(dets)
        map50_95, map50 = summary_from_precision(precision)
        result = ScoreResult(map50_95, map50)
        if per_class:
            result.per_class_ap50_95, result.per_class_ap50 = per_class_from_precision(precision, self.cat_ids)
        return result
