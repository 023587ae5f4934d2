"""Values derived once from :class:`~detector.config.EngineConfig` for the hot path."""

from __future__ import annotations

import math
from dataclasses import dataclass

from detector.config import EngineConfig
from detector.engine.baseline import Rates


@dataclass(frozen=True)
class Params:
    """Thresholds and learning rates, precomputed so that ticks do no config maths."""

    cfg: EngineConfig
    rates: Rates
    tpb: int
    bucket_s: float
    tick_s: float
    shifts: tuple[float, ...]
    h_chart: float
    h_burst: float
    h_window: float
    h_probe: float
    """Threshold of the end-of-probe verdict."""
    h_joint_min: float
    """Rate evidence needed before who-is-hit evidence may add to it."""
    joint_extra: float
    """Threshold increase for a sum of two likelihood ratios (union bound on the sum)."""
    h_reversal: float
    h_silence: float
    h_shift: float
    h_extreme: float
    config_version: str

    @classmethod
    def of(cls, cfg: EngineConfig) -> Params:
        """Derive every threshold and rate from the configuration."""
        rates = Rates.from_half_lives(
            cfg.bucket_seconds,
            cfg.level_half_life_buckets,
            cfg.daily_half_life_days,
            cfg.weekly_half_life_weeks,
            cfg.dispersion_half_life_buckets,
            cfg.min_dispersion,
            cfg.warmup_dispersion,
            cfg.warmup_buckets,
        )
        return cls(
            cfg=cfg,
            rates=rates,
            tpb=cfg.ticks_per_bucket,
            bucket_s=float(cfg.bucket_seconds),
            tick_s=float(cfg.tick_seconds),
            shifts=tuple(cfg.surge_shifts),
            h_chart=cfg.pause_threshold(1),
            h_burst=cfg.pause_threshold(cfg.ticks_per_bucket),
            h_window=cfg.pause_threshold(cfg.ticks_per_bucket * 4),
            h_probe=-math.log(cfg.probe_alpha),
            h_joint_min=cfg.extreme_threshold,
            joint_extra=math.log1p(cfg.pause_threshold(cfg.ticks_per_bucket * 4)),
            h_reversal=cfg.pause_threshold(1),
            h_silence=cfg.alert_threshold(),
            h_shift=cfg.shift_threshold,
            h_extreme=cfg.extreme_threshold,
            config_version=cfg.version,
        )
