"""llama.cpp's last-token logits along a greedy decode, saved for compare_logits.py.

Usage (project root): python -m studies.runtime_full_residency.llama_logits MODEL.gguf OUT.npz [--steps 32] [--cpu]

The model is loaded exactly as the llama_cpp backend's trial children load it
(``llama_cpp_trial.setup`` in a ``autotune.isolation.child_main`` child): loading the CUDA build by
hand in a script crashed on the GPU machine, while trial children load the same file fine.
Saves the prompt, the greedy tokens and the logits (steps, vocab) after the prompt and after
each generated token but the last.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PROMPT = "The history of the people who were first in the time of their own land"
TARGET = "studies.runtime_full_residency.llama_logits"


def setup(common: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from autotune.backends.llama_cpp.trial import setup as load_like_a_trial

    return load_like_a_trial(common)


def run(loaded: Any, item: dict[str, Any]) -> dict[str, Any]:
    """Greedy decode of ``item["steps"]`` tokens after PROMPT; the logits go to ``item["out"]``."""
    import llama_cpp
    import numpy as np

    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = 256
    ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(loaded.model, ctx_params)
    vocab = llama_cpp.llama_model_get_vocab(loaded.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    text = PROMPT.encode()
    buffer = (llama_cpp.llama_token * 256)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buffer, 256, False, False)
    prompt = list(buffer[:n])

    def decode(tokens: list[int]) -> np.ndarray:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()

    logits, tokens = [decode(prompt)], []
    for step in range(item["steps"]):
        tokens.append(int(logits[-1].argmax()))
        if step < item["steps"] - 1:
            logits.append(decode([tokens[-1]]))
    llama_cpp.llama_free(ctx)
    np.savez(item["out"], prompt=np.array(prompt), tokens=np.array(tokens), logits=np.stack(logits))
    return {"extra": {"prompt_tokens": len(prompt), "steps": item["steps"]}}


def main() -> None:
    from autotune.isolation.trial_process import run_isolated

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    common = {"model_path": args.model, "n_gpu_layers": 0 if args.cpu else 99, "use_mmap": True, "cpu_patterns": []}
    item = {"steps": args.steps, "out": str(Path(args.out).resolve())}
    [result] = run_isolated(TARGET, common, [item], deadline_s=300)
    if not result.ok:
        raise SystemExit(f"llama.cpp logits: {result.outcome.value}: {result.message}")
    print(f"llama.cpp: prompt {result.extra['prompt_tokens']} tokens, {args.steps} greedy steps -> {args.out}")


if __name__ == "__main__":
    main()
