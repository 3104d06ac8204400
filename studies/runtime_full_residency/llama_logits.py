"""llama.cpp's last-token logits along a greedy decode, saved for compare_logits.py.

Usage: python llama_logits.py MODEL.gguf OUT.npz [--steps 32] [--cpu]

Runs in its own process without torch (in one process torch must be imported before
llama_cpp), through llama.cpp's C API as autotune's llama_cpp backend does (the high-level
``Llama`` class crashed on the GPU machine). Saves the prompt, the greedy tokens and the
logits (steps, vocab) after the prompt and after each generated token but the last.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

PROMPT = "The history of the people who were first in the time of their own land"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()

    import llama_cpp

    from autotune.backends.llama_python import silence_llama_log

    silence_llama_log()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0 if args.cpu else 99
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP  # "auto" crashed the CUDA build's loader
    model = llama_cpp.llama_model_load_from_file(os.fsencode(args.model), params)
    if not model:
        raise SystemExit("llama.cpp could not load the model")
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = 256
    ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    text = PROMPT.encode()
    buffer = (llama_cpp.llama_token * 256)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buffer, 256, False, False)
    prompt = list(buffer[:n])

    def decode(tokens: list[int]) -> np.ndarray:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
            raise SystemExit("llama_decode failed")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()

    logits, tokens = [decode(prompt)], []
    for step in range(args.steps):
        tokens.append(int(logits[-1].argmax()))
        if step < args.steps - 1:
            logits.append(decode([tokens[-1]]))
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    np.savez(args.out, prompt=np.array(prompt), tokens=np.array(tokens), logits=np.stack(logits))
    print(f"llama.cpp: prompt {len(prompt)} tokens, {args.steps} greedy steps -> {args.out}")


if __name__ == "__main__":
    main()
