"""llama.cpp's last-token logits along a greedy decode, saved for compare_logits.py.

Usage: python llama_logits.py MODEL.gguf OUT.npz [--steps 32] [--cpu]

Runs in its own process without torch (in one process torch must be imported before
llama_cpp). Saves the prompt, the greedy tokens and the logits (steps, vocab) after the
prompt and after each generated token but the last.
"""

from __future__ import annotations

import argparse

import numpy as np

PROMPT = "The history of the people who were first in the time of their own land"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()

    from llama_cpp import Llama

    llm = Llama(args.model, n_gpu_layers=0 if args.cpu else -1, n_ctx=256, n_batch=256,
                flash_attn=True, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False)
    n_vocab = llm.n_vocab()
    logits, tokens = [], []
    llm.eval(prompt)
    for step in range(args.steps):
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()
        logits.append(row)
        tokens.append(int(row.argmax()))
        if step < args.steps - 1:
            llm.eval([tokens[-1]])
    np.savez(args.out, prompt=np.array(prompt), tokens=np.array(tokens), logits=np.stack(logits))
    print(f"llama.cpp: prompt {len(prompt)} tokens, {args.steps} greedy steps -> {args.out}")


if __name__ == "__main__":
    main()
