"""Timed completions over HTTP, by the project's rule for measuring a server.

Non-streamed ``POST /v1/completions`` at temperature 0 with ``ignore_eos`` and ``cache_prompt:
false`` (llama-server would reuse the prompt's KV cache; autotune serve ignores the field), the
prompt as token ids: random ones, another per repetition. A warm-up request first, not counted;
then per repetition t1, a request for 1 token, and tN, the same prompt for ``n_gen`` tokens:
decode is (n_gen - 1) / (tN - t1) tokens/s, prefill n_prompt / t1. A pair with tN no longer
than t1 (noise) is timed again.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

from autotune.backends.base import Measurement
from autotune.served.figures import ServeFailed
from autotune.served.server import ServerProcess

CONNECT_TIMEOUT_S = 10.0
EXIT_WAIT_S = 2.0  # after a broken connection: time for the server's exit status to show
PAIR_TRIES = 3  # timings of one repetition's t1 and tN before a decode too short to time fails


def random_prompts(count: int, n_prompt: int, n_vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``n_prompt`` token ids drawn uniformly from [0, n_vocab)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_vocab, size=n_prompt).tolist() for _ in range(count)]


def measure_completions(
    http: httpx.Client, server: ServerProcess, prompts: list[list[int]], n_gen: int, deadline_s: float
) -> tuple[Measurement, Measurement]:
    """Decode and prefill tokens/s: the first prompt warms up, each other one is a repetition."""
    warm_up, *measured = prompts
    timed_completion(http, server, warm_up, n_gen, deadline_s)
    decode, prefill = [], []
    for prompt in measured:
        t1, tn = _timed_pair(http, server, prompt, n_gen, deadline_s)
        decode.append((n_gen - 1) / (tn - t1))
        prefill.append(len(prompt) / t1)
    return Measurement.of(decode), Measurement.of(prefill)


def _timed_pair(
    http: httpx.Client, server: ServerProcess, prompt: list[int], n_gen: int, deadline_s: float
) -> tuple[float, float]:
    """t1 and tN of one prompt. When tN comes out no longer than t1 (only noise does that: a
    stalled CPU, a decode of few fast tokens) the pair is timed again, at most PAIR_TRIES times."""
    for _ in range(PAIR_TRIES):
        t1 = timed_completion(http, server, prompt, 1, deadline_s)
        tn = timed_completion(http, server, prompt, n_gen, deadline_s)
        if tn > t1:
            return t1, tn
    raise ServeFailed(f"{server.label}: {n_gen} tokens came no later than 1 ({tn:.4f} s against {t1:.4f} s, "
                      f"{PAIR_TRIES} times); too few tokens to time decode")


def timed_completion(
    http: httpx.Client, server: ServerProcess, prompt: list[int], max_tokens: int, deadline_s: float
) -> float:
    """Seconds one completion of exactly ``max_tokens`` tokens took, request to whole answer."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False, "stream": False}
    what = f"a completion of {max_tokens} token{'s' if max_tokens != 1 else ''}"
    started = time.perf_counter()
    try:
        response = http.post("/v1/completions", json=body, timeout=httpx.Timeout(deadline_s, connect=CONNECT_TIMEOUT_S))
    except httpx.TimeoutException:
        raise ServeFailed(f"{server.label}: no answer to {what} within the {deadline_s:g} s deadline") from None
    except httpx.TransportError as exc:
        raise ServeFailed(server.exited(EXIT_WAIT_S) or f"{server.label}: {what} failed: {exc}") from None
    seconds = time.perf_counter() - started
    answer = _json(response)
    if response.status_code != 200:
        error = answer.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise ServeFailed(f"{server.label} answered {what} with status {response.status_code}: "
                          f"{message or ' '.join(response.text.split())[:200]}")
    usage = answer.get("usage") or {}
    if usage.get("completion_tokens") != max_tokens:
        choices = answer.get("choices") or [{}]
        raise ServeFailed(f"{server.label} gave {usage.get('completion_tokens')} tokens for {what} "
                          f"(finish_reason {choices[0].get('finish_reason')!r}, usage {usage})")
    return seconds


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
