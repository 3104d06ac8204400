"""Routing skew through the router weights: uneven expert popularity, per layer.

The writer gives every token embedding a large constant in channel 0 (a "massive
activation", as real LLMs have), so after RMSNorm the router sees a near-constant
x0 there. Router column 0 then acts as a per-expert bias b_e / x0, while the other
columns add token-dependent noise of unit variance. Popularity follows from the
spread s of the biases; ``calibrate_bias_spread`` finds the s for which a static
placement holding 64% of a layer's experts (chosen by frequency) misses ~7% of
activations, the figure reported for real MoE models. The file's real routing is
measured separately (``autotune.measured_routing``), never assumed from this model.
"""

from __future__ import annotations

import numpy as np

TARGET_MISS_RATE = 0.07  # of expert activations, at the placement below
PLACEMENT_FRACTION = 0.64  # of each layer's experts held by the static placement
LAYER_SPREAD_RANGE = (0.8, 1.25)  # per-layer factor on the bias spread: layers differ


def static_placement_miss_rate(counts: np.ndarray, fraction: float = PLACEMENT_FRACTION) -> float:
    """Share of activations that miss a placement holding the most frequent experts.

    ``counts`` is (layers, experts) activation counts; the placement is chosen from the
    same counts (frequency-calibrated).
    """
    counts = np.asarray(counts, dtype=np.float64)
    slots = int(round(fraction * counts.shape[1]))
    ranked = np.sort(counts, axis=1)[:, ::-1]
    return float(1.0 - ranked[:, :slots].sum() / counts.sum())


def simulated_counts(
    biases: np.ndarray, n_expert_used: int, n_tokens: int, rng: np.random.Generator
) -> np.ndarray:
    """Top-k selection counts for logits = bias + unit Gaussian noise, per layer."""
    n_layers, n_expert = biases.shape
    counts = np.zeros((n_layers, n_expert))
    for layer in range(n_layers):
        logits = biases[layer] + rng.standard_normal((n_tokens, n_expert))
        top = np.argpartition(-logits, n_expert_used - 1, axis=1)[:, :n_expert_used]
        counts[layer] = np.bincount(top.ravel(), minlength=n_expert)
    return counts


def layer_biases(
    n_layers: int, n_expert: int, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """Per-layer expert biases: Gaussian with a layer-specific spread (0 spread: uniform)."""
    factors = rng.uniform(*LAYER_SPREAD_RANGE, size=(n_layers, 1))
    return spread * factors * rng.standard_normal((n_layers, n_expert))


def calibrate_bias_spread(
    n_expert: int, n_expert_used: int, target: float = TARGET_MISS_RATE, seed: int = 0
) -> float:
    """The bias spread whose simulated static-placement miss rate is ``target``."""
    lo, hi = 0.0, 8.0
    for _ in range(18):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(seed)
        biases = layer_biases(8, n_expert, mid, rng)
        miss = static_placement_miss_rate(simulated_counts(biases, n_expert_used, 4000, rng))
        lo, hi = (mid, hi) if miss > target else (lo, mid)
    return (lo + hi) / 2
