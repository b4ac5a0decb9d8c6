"""sensitivity.json, format "qdqtorch.sensitivity", version 1: what every field means.

Top level (a JSON object):
- `format`: "qdqtorch.sensitivity"; `version`: 1 (bumped on incompatible changes; readers check both).
- `fingerprint`: sha256 over model, data and settings; journals and shards with another fingerprint are refused.
- `model`: {`source`, `fingerprint` (parameters, buffers incl. amax, quantizer states), `num_quantizers`, ...}.
- `data`: what the metric evaluates on (`describe()` of the metric: image files digest, count, image size, ...).
- `settings`: {`mode` ("disable-one" | "enable-one"), `unit` ("quantizer" | "layer" | "block"), `block_depth`,
  `metric`, `higher_is_better`, `reference` ("quantized" | "float": the baseline `delta` is taken against), plus
  the run's `topk`, `prefilter`, `budget`, `calibration` ...}.
- `baselines`: {"float": {`metric`, `time_s`}, "quantized": {`metric`, `time_s`}} (either may be missing only in
  an incomplete result).
- `entries`: one object per evaluated unit, most impactful first:
  {`rank` (1 = most sensitive), `unit`, `kind`, `layers`, `quantizers`, `metric` (with the unit switched: float in
  disable-one, the only quantized one in enable-one), `delta` (metric − reference baseline), `impact` (accuracy
  quantizing this unit costs, in metric units, positive = harmful: disable-one: metric − quantized baseline,
  enable-one: float baseline − metric; sign-flipped when lower is better), `time_s`, and when a proxy pass ran,
  `proxy_snr_db` and `proxy_rank`, and `significant` (impact above `noise.std`; null when the noise is unknown)}.
  Ties in impact keep the model's order.
- `noise` (null when the metric gives no bootstrap, e.g. a custom `module:function`): {`std` (standard deviation
  of the all-quantized baseline over a bootstrap of the images: how much the figure moves with the choice of
  images), `method`, `significant_if`}.
- `not_evaluated`: units left out by `--prefilter` (with their proxy score), `missing`: units whose result is
  absent (an unmerged shard); `complete`: true when nothing is missing.
- `proxy` (optional): {`score`, `num_batches`, `layers` (name -> op), `all_quantized` and `single` (name -> {snr_db,
  mse, cosine, q_min, q_max, f_min, f_max, f_hist}), `unit_scores`, `ranking`, `rank_correlation`: {`spearman`,
  `n`, `top5_overlap`, `meaning` (a sentence)} between proxy ranking and metric ranking over units that have
  both}.
- `recommendation`: {`source` ("budget" | "top"), `units` kept float (only units above the noise when it is known),
  `note` (present when no unit's impact exceeds the noise), `ignore` regexes for `QuantConfig.ignore`
  (re.match on module paths), `config` (the content of sensitivity_config.yaml: the run's PTQ settings with the
  regexes added to `ignore`, or a `quant:` QuantConfig section; null when the base config is unknown),
  `config_file`}.
- `budget` (optional): {`budget`, `relative`, `allowed` (absolute drop allowed), `target` (the metric value to
  reach), `candidates` (units tried per greedy step), `steps`: [{`float_units`, `metric`, `gap` (float − metric,
  sign-adjusted), `kept`}], `selected`, `within_budget`, `verification`: {`method` (a fresh model quantized with
  the recommended ignore list, or an in-place re-evaluation), `metric`, `gap`, `within_budget`, `time_s`}}.
- `timing`: {`created`, `total_s`, `evaluations_this_run`, `resumed_from_journal`, `world_size`, `prefix_reuse`
  ({`replayed_modules`, `cached_modules`, `recorded_batches`, `cache_mib`} or null)}: volatile, like every
  `time_s`, `output_dir`, `config_file` and the PTQ `out` folder; `comparable()` drops them.
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import UsageError

FORMAT = "qdqtorch.sensitivity"
VERSION = 1
VOLATILE_KEYS = ("time_s", "timing", "created", "config_file", "output_dir", "out")


def check_result(data: Any, where: str = "sensitivity.json") -> dict:
    """Validate the format/version header of a loaded result; returns it."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{where}: not a qdqtorch sensitivity result (no format: {FORMAT})")
    if data.get("version") != VERSION:
        raise UsageError(f"{where}: version {data.get('version')} not supported by this qdqtorch (reads {VERSION})")
    for key in ("settings", "baselines", "entries"):
        if key not in data:
            raise UsageError(f"{where}: missing required field {key!r}")
    return data


def comparable(data: dict) -> dict:
    """A copy without timings and paths, for comparing two runs of the same sweep."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(copy.deepcopy(data))
