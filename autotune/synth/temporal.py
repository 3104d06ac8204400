"""Temporal locality in routing: a recency-weighted mean of earlier tokens in the router's input.

Real routers see a hidden state that changes slowly from token to token, so adjacent tokens
share many experts. A synthetic file gets the same from its first attention layer, whose
heads attend to a window of recent tokens and write their mean (a slowly varying vector) into
the residual stream that every layer's router reads:

- Q and K read only the constant channel 0 (the "massive activation", see ``skew``), so after
  the q/k norms every head's query and key are fixed vectors with energy in a few RoPE pairs.
  The score at distance d is then ``sum_j A_j cos(theta_j d)``: highest at d = 0 and falling
  like a Gaussian of width ``WINDOW_TOKENS``. The pairs are the slowest ones whose total peak
  stays under ``PEAK_SCORE_MAX`` (a bounded score keeps the F16 KV cache's rounding small),
  and several incommensurate pairs keep the far field from lining up again.
- V reads every channel but 0, so the head outputs are the window's mean of random token
  vectors, and the output projection sets that mean's variance in the residual stream.

For the router, the logit of expert e at token t is then ``b_e + a * s_e(t) + n_e(t)``: a
static per-layer bias (as in ``skew``), a slow unit-variance component of strength ``a`` and
independent unit noise from the token itself. ``calibrate`` finds the bias spread and ``a``
for which this process, simulated, meets the real model's top-share and adjacent-overlap
figures at the file's shape; the file's own routing is measured through llama.cpp
(``autotune.measured_routing``), never assumed from this simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from autotune.routing_stats import adjacent_overlap, top_share
from autotune.synth.real_routing import ADJACENT_OVERLAP, TOP_SHARE_BAND, RoutingTargets

WINDOW_TOKENS = 16.0  # width (standard deviation, tokens) of the recency window
WINDOW_PAIRS = 6  # RoPE pairs the window's queries and keys use
PEAK_SCORE_MAX = 40.0  # the window's score at distance 0 above its far field
TARGET_TOP_SHARE = 0.52  # inside TOP_SHARE_BAND, leaving room for the layers' spread
TARGET_OVERLAP = sum(ADJACENT_OVERLAP) / 2
LAYER_FACTORS = (0.85, 1.15)  # the bias spread of each layer, relative: layers differ
SIM_LAYERS, SIM_TOKENS = 8, 2048
assert TOP_SHARE_BAND[0] < TARGET_TOP_SHARE < TOP_SHARE_BAND[1]


@dataclass(frozen=True)
class RecencyWindow:
    """Which RoPE pairs the window's heads use and the score each adds at distance 0."""

    head_dim: int
    pairs: tuple[int, ...]  # pair i rotates dims i and i + head_dim/2 (NEOX order)
    thetas: tuple[float, ...]  # each pair's angle per token
    pair_score: float  # A_j, the same for every pair

    @property
    def norm_weight(self) -> float:
        """The q_norm / k_norm weight at the pairs' dims. A query (key) with equal entries on
        the m pairs' first dims is normalised to sqrt(d/m) there, so the scaled score of a
        pair is sqrt(d) * w^2 / m; w makes it ``pair_score``."""
        return math.sqrt(self.pair_score * len(self.pairs) / math.sqrt(self.head_dim))

    def weights(self, n_tokens: int) -> np.ndarray:
        """Attention weight on the token ``d`` back, d = 0 .. n_tokens-1, deep in a sequence."""
        distance = np.arange(n_tokens)[:, None]
        score = self.pair_score * np.cos(distance * np.asarray(self.thetas)).sum(axis=1)
        weights = np.exp(score - score.max())
        return weights / weights.sum()


def recency_window(head_dim: int, rope_base: float, width: float = WINDOW_TOKENS) -> RecencyWindow:
    """The slowest ``WINDOW_PAIRS`` consecutive pairs whose Gaussian width ``width`` needs a peak
    score within ``PEAK_SCORE_MAX`` (curvature: sum_j A_j theta_j^2 = 1 / width^2)."""
    thetas = rope_base ** (-2.0 * np.arange(head_dim // 2) / head_dim)
    for first in range(head_dim // 2 - WINDOW_PAIRS, -1, -1):
        chosen = thetas[first : first + WINDOW_PAIRS]
        pair_score = 1.0 / (width**2 * float((chosen**2).sum()))
        if pair_score * WINDOW_PAIRS <= PEAK_SCORE_MAX:
            pairs = tuple(range(first, first + WINDOW_PAIRS))
            return RecencyWindow(head_dim, pairs, tuple(float(t) for t in chosen), pair_score)
    raise ValueError(f"no RoPE pairs of a {head_dim}-dim head give a {width}-token window")


def layer_biases(n_layers: int, n_expert: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Per-layer expert biases: the normal distribution's quantiles (the same profile in every
    layer, no luck of the draw in a layer's concentration) in a random order of experts, times
    ``spread`` and a factor evenly spaced over ``LAYER_FACTORS`` (layers in random order)."""
    quantiles = np.array([NormalDist().inv_cdf((i + 0.5) / n_expert) for i in range(n_expert)])
    factors = rng.permutation(np.linspace(*LAYER_FACTORS, n_layers))
    return spread * factors[:, None] * np.stack([rng.permutation(quantiles) for _ in range(n_layers)])


class _SimulatedRouting:
    """Router logits ``spread * bias + a * slow + noise`` with every random draw fixed once,
    so calibration moves two numbers over the same sample (common random numbers)."""

    def __init__(self, n_expert: int, n_expert_used: int, window: RecencyWindow, seed: int):
        rng = np.random.default_rng(seed)
        self.k = n_expert_used
        self.unit_biases = layer_biases(SIM_LAYERS, n_expert, 1.0, rng)
        self.noise = rng.standard_normal((SIM_LAYERS, SIM_TOKENS, n_expert))
        self.slow = _slow_component(window.weights(SIM_TOKENS), rng, (SIM_LAYERS, SIM_TOKENS, n_expert))

    def experts(self, spread: float, strength: float) -> np.ndarray:
        logits = spread * self.unit_biases[:, None, :] + strength * self.slow + self.noise
        return np.argpartition(-logits, self.k - 1, axis=2)[:, :, : self.k]


def _slow_component(weights: np.ndarray, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Unit-variance windowed means of i.i.d. Gaussian vectors along the token axis."""
    n_tokens = shape[1]
    white = rng.standard_normal((shape[0], 2 * n_tokens, shape[2]))
    size = 4 * n_tokens
    smooth = np.fft.irfft(np.fft.rfft(white, size, axis=1) * np.fft.rfft(weights, size)[None, :, None], size, axis=1)
    return smooth[:, n_tokens : 2 * n_tokens] / math.sqrt(float((weights**2).sum()))


@dataclass(frozen=True)
class TemporalRouting:
    spread: float  # of the per-layer expert biases
    strength: float  # a: the slow component's standard deviation in logit units
    simulated_top_share: float  # mean over layers, of the top n/8 experts
    simulated_overlap: float


def _bisect(f, lo: float, hi: float, target: float, steps: int = 14) -> float:
    """x in [lo, hi] where the increasing function f crosses ``target``."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def calibrate(n_expert: int, n_expert_used: int, window: RecencyWindow, seed: int = 0) -> TemporalRouting:
    """The bias spread and slow strength whose simulated routing has the target top share and
    adjacent overlap (both grow with both numbers, so the two are fitted in turns)."""
    sim = _SimulatedRouting(n_expert, n_expert_used, window, seed)
    top = RoutingTargets(n_expert, n_expert_used).top
    share = lambda spread, strength: float(top_share(sim.experts(spread, strength), n_expert, top).mean())  # noqa: E731
    overlap = lambda spread, strength: adjacent_overlap(sim.experts(spread, strength), n_expert)  # noqa: E731
    spread, strength = 1.0, 1.0
    for _ in range(3):
        spread = _bisect(lambda s: share(s, strength), 0.0, 6.0, TARGET_TOP_SHARE)
        strength = _bisect(lambda a: overlap(spread, a), 0.0, 6.0, TARGET_OVERLAP)
    return TemporalRouting(spread, strength, share(spread, strength), overlap(spread, strength))
