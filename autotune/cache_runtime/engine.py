"""The runtime's entry point: load a GGUF, prefill, decode, generate, trace routing.

    engine = Engine("model.gguf")              # CUDA + Triton kernels when there is a GPU
    logits = engine.prefill(tokens)            # (vocab,) logits of the last prompt token
    tokens = engine.generate(prompt, 32)       # greedy; temperature=... samples
    engine.trace.enabled = True                # then engine.trace.ids() / .counts()
    text = engine.complete("Once upon", 16)    # through the GGUF's tokenizer (llama_cpp)
"""

from __future__ import annotations

from pathlib import Path

import torch

from autotune.cache_runtime.graph import DecodeGraph
from autotune.cache_runtime.kv_cache import KVCache
from autotune.cache_runtime.model import forward
from autotune.cache_runtime.rope import RopeTable
from autotune.cache_runtime.routing import RoutingTrace
from autotune.cache_runtime.sampling import greedy, gumbel_sample
from autotune.cache_runtime.torch_ops import TorchOps
from autotune.cache_runtime.weights import load_weights


class Engine:
    """One model, one sequence. ``kernels``: "triton" (the GPU default) or "torch"."""

    def __init__(self, path: str | Path, device: str | None = None, max_ctx: int = 4096,
                 kernels: str | None = None, use_graph: bool = True, prefill_chunk: int = 2048):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kernels = kernels or ("triton" if device.type == "cuda" else "torch")
        self.path = Path(path)
        self.weights = load_weights(path).to(device)
        self.cfg = self.weights.config
        self.device = device
        # The Triton kernels keep keys and values in float16 (as llama.cpp does by default).
        self.cache = KVCache(self.cfg, max_ctx, device,
                             torch.float16 if kernels == "triton" else torch.float32)
        self.rope = RopeTable(self.cfg, max_ctx, device)
        if kernels == "triton":
            from autotune.cache_runtime.triton_ops import TritonOps

            self.ops: TorchOps = TritonOps(self.weights, self.cache, self.rope)
        elif kernels == "torch":
            self.ops = TorchOps(self.weights, self.cache, self.rope)
        else:
            raise ValueError(f"kernels must be 'triton' or 'torch', not {kernels!r}")
        self.use_graph = use_graph and device.type == "cuda" and kernels == "triton"
        self.prefill_chunk = prefill_chunk
        self.trace = RoutingTrace(self.cfg.n_layers, self.cfg.n_expert)
        self.inv_temperature = torch.ones(1, device=device)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.n_past = 0
        self._graphs: dict[bool, DecodeGraph] = {}
        self._tokenizer = None

    def reset(self) -> None:
        """Start a new sequence (the cache is overwritten as it goes)."""
        self.n_past = 0
        self.cache.pos.zero_()

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.cache.max_ctx:
            raise ValueError(f"context full: {self.n_past} + {n} > {self.cache.max_ctx} tokens")

    @torch.inference_mode()
    def prefill(self, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """Process prompt tokens; the last one's logits (vocab,) float32."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(-1)
        self._check_room(len(tokens))
        for chunk in tokens.split(self.prefill_chunk):
            self.cache.pos.fill_(self.n_past)  # a one-token chunk runs the decode kernels
            logits, ids = forward(self.ops, chunk, self.n_past)
            self.trace.record(ids)
            self.n_past += len(chunk)
        self.cache.pos.fill_(self.n_past)
        return logits

    def _step(self, token: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step at cache.pos: logits, selected experts, and the next token fed back."""
        logits, ids = forward(self.ops, token, self.n_past)
        nxt = gumbel_sample(logits, self.inv_temperature) if sample else greedy(logits)
        token.copy_(nxt)
        self.cache.pos.add_(1)
        return logits, ids, nxt

    @torch.inference_mode()
    def decode(self, token: int | torch.Tensor | None = None, sample: bool = False) -> torch.Tensor:
        """Decode one token (None: the one the previous step chose); its logits (vocab,).

        The chosen next token is left in ``self.token``. On the GPU this replays a captured
        graph and the logits are its static buffer: clone them to keep them past the next step.
        """
        self._check_room(1)
        if token is not None:
            self.token.copy_(torch.as_tensor(token, device=self.device).reshape(1))
        if self.use_graph:
            graph = self._graphs.get(sample)
            if graph is None:
                graph = DecodeGraph(lambda t: self._step(t, sample), self.token, self.cache.pos)
                self._graphs[sample] = graph
            logits, ids, _ = graph.replay()
        else:
            logits, ids, _ = self._step(self.token, sample)
        self.trace.record(ids)
        self.n_past += 1
        return logits

    @torch.inference_mode()
    def generate(self, prompt: list[int], n: int, temperature: float = 0.0) -> list[int]:
        """Prefill ``prompt`` (after a reset) and decode ``n`` new tokens; their ids."""
        self.reset()
        sample = temperature > 0
        if sample:
            self.inv_temperature.fill_(1.0 / temperature)
        logits = self.prefill(prompt)
        self.token.copy_(gumbel_sample(logits, self.inv_temperature) if sample else greedy(logits))
        out = [self.token.clone()]
        for _ in range(n - 1):
            self.decode(sample=sample)
            out.append(self.token.clone())
        return [int(t) for t in torch.cat(out).tolist()]

    @property
    def tokenizer(self):
        """The GGUF's tokenizer (needs llama-cpp-python), loaded on first use."""
        if self._tokenizer is None:
            from autotune.cache_runtime.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.path)
        return self._tokenizer

    def complete(self, prompt: str, n: int, temperature: float = 0.0) -> str:
        """``n`` tokens of continuation of ``prompt``, as text."""
        return self.tokenizer.decode(self.generate(self.tokenizer.encode(prompt), n, temperature))
