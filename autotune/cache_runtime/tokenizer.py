"""The GGUF's own tokenizer, through llama.cpp loaded vocabulary-only (no weights).

In a process that also uses torch, import torch first (llama_cpp and torch bring two
OpenMP runtimes; the other order aborts on the GPU machine); the runtime does.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from autotune.errors import AutotuneError

_QUIET_LOG = None  # llama.cpp's log callback while reading vocabularies; kept alive here


def _silence(llama_cpp) -> None:
    global _QUIET_LOG
    if _QUIET_LOG is None:
        _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))


class Tokenizer:
    def __init__(self, path: str | Path):
        try:
            import llama_cpp
        except ImportError:
            raise AutotuneError("tokenizing needs llama-cpp-python (pip install llama-cpp-python==0.3.36)") from None
        self._api = llama_cpp
        _silence(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(str(path)), params)
        if not self._model:
            raise AutotuneError(f"{path}: llama.cpp could not read the vocabulary")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self._vocab)
        # the token a prompt starts with, where the vocabulary asks for one
        self.bos_id = llama_cpp.llama_vocab_bos(self._vocab) if llama_cpp.llama_vocab_get_add_bos(self._vocab) else None

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special``: parse control tokens such as <|im_start|>."""
        data = text.encode()
        capacity = len(data) + 8
        buffer = (self._api.llama_token * capacity)()
        n = self._api.llama_tokenize(self._vocab, data, len(data), buffer, capacity, False, special)
        if n < 0:
            raise AutotuneError(f"tokenizing needs room for {-n} tokens")
        return list(buffer[:n])

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (none for a control token); a character may span tokens."""
        buffer = ctypes.create_string_buffer(256)
        n = self._api.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if n < 0:  # a longer piece: -n bytes
            buffer = ctypes.create_string_buffer(-n)
            n = self._api.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[: max(n, 0)]

    def decode(self, tokens: list[int]) -> str:
        return b"".join(self.piece(token) for token in tokens).decode(errors="replace")

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (end of text, end of turn)."""
        return bool(self._api.llama_vocab_is_eog(self._vocab, token))

    def text(self, token: int) -> str:
        """The token as written in the vocabulary (control tokens by name, e.g. ``<|im_end|>``)."""
        return self._api.llama_vocab_get_text(self._vocab, token).decode(errors="replace")

    def __del__(self):
        if getattr(self, "_model", None):
            self._api.llama_model_free(self._model)
            self._model = None
