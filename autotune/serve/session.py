"""The served model: its engine, tokenizer and chat template, one sequence at a time.

Every call into the engine runs on one thread (``call``), in order, so a request that ends
early (a client gone mid-stream) leaves nothing running beside the next one; ``lock`` keeps
a sequence's steps together. Greedy decoding gives exactly ``Engine.generate``'s tokens.

The engine is loaded on that thread too (``Session.load``). OpenMP runtimes (torch's, ggml's)
keep a team of threads for each thread that starts parallel work: an engine loaded on the main
thread and run on another has two teams competing for the cores, libgomp then cuts its
spinning short, and every parallel op pays to wake its team. On the CPU path that made decode
2.5-3x slower than the same engine on its loading thread (studies/hybrid/served_gap.py).

The routing counts the engine learns are saved as it serves (every ``save_every`` seconds
once tokens were generated since the last save: ``autosave`` between sequences, the
sequence itself between its steps), and at shutdown, so a server killed outright loses at
most one interval of them. With a ``trace_path`` (``--record-trace``), the routing trace of
every token served so far is written there at the same times (whole, atomically).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

from autotune.serve.chat import model_chat_template, prompt_ids
from autotune.serve.text import TextStream

T = TypeVar("T")


class BadRequest(Exception):
    """A request the server refuses (HTTP 400); ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past end-of-generation tokens


@dataclass
class Chunk:
    """Text that became safe to send, the tokens behind it, and (last chunk) why it ended."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Counters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def engine_thread() -> ThreadPoolExecutor:
    """The one thread an engine is loaded and run on (see the module's docstring)."""
    return ThreadPoolExecutor(1, thread_name_prefix="engine")


class Session:
    def __init__(self, engine: Any, model_id: str, config: dict[str, Any], save_every: float = 30.0,
                 trace_path: Path | None = None, thread: ThreadPoolExecutor | None = None):
        """``trace_path``: where to write the routing trace the engine records (``engine.trace``);
        ``thread``: the engine thread the engine was loaded on (``load``), else a new one."""
        self.engine = engine
        self.save_every = save_every
        self.trace_path = trace_path
        self._saved_at_tokens = 0  # completion tokens counted at the last save
        self._saved_trace_tokens = 0  # traced tokens at the last save
        self._saved_at = time.monotonic()
        self.model_id = model_id
        self.config = config  # the cache config it runs with (shown at /v1/stats)
        self.max_ctx: int = engine.kv_cache.max_ctx
        self.tokenizer = engine.tokenizer
        self.chat = model_chat_template(engine.path, self.tokenizer.text)
        self.counters = Counters()
        self._executor = thread or engine_thread()
        self.lock = asyncio.Lock()  # bound to the event loop that first waits on it

    @classmethod
    def load(cls, load_engine: Callable[[], Any], model_id: str, config: dict[str, Any], save_every: float = 30.0,
             trace_path: Path | None = None) -> Session:
        """Load the engine (``load_engine()``) on the thread that will run it, and serve it."""
        thread = engine_thread()
        try:
            engine = thread.submit(load_engine).result()
        except BaseException:
            thread.shutdown(wait=True)
            raise
        return cls(engine, model_id, config, save_every, trace_path, thread)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the engine's thread."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def autosave(self) -> None:
        """Save the routing counts every ``save_every`` seconds while tokens are generated."""
        while True:
            await asyncio.sleep(self.save_every)
            await self.call(self.save_routing)

    # -- the engine's thread -----------------------------------------------------------

    def _start(self, prompt: list[int], sampling: Sampling) -> int:
        return self.engine.start(prompt, sampling.temperature)

    def _next(self, sample: bool) -> int:
        self.engine.decode(sample=sample)
        return int(self.engine.token.item())

    def save_routing(self) -> None:
        """Persist the counts if tokens were generated since the last save, and the trace if it
        grew (engine thread)."""
        generated = self.counters.completion_tokens
        if generated != self._saved_at_tokens:
            self.engine.save_routing()
            self._saved_at_tokens = generated
        if self.trace_path is not None:
            from autotune.cache_runtime.trace_file import write_trace

            trace = self.engine.recorded_trace()
            if trace.n_tokens != self._saved_trace_tokens:
                write_trace(self.trace_path, trace)
                self._saved_trace_tokens = trace.n_tokens
        self._saved_at = time.monotonic()

    def stats(self) -> dict[str, Any]:
        """The cache's statistics since start, as plain JSON values."""
        stats = self.engine.cache_stats()
        return json.loads(json.dumps(stats, default=lambda value: value.item() if hasattr(value, "item") else str(value)))

    # -- requests ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, text)

    def check_prompt(self, prompt: list[int], max_tokens: int | None) -> int:
        """The number of tokens to generate (``None``: as many as the context holds)."""
        if not prompt:
            raise BadRequest("the prompt is empty", "prompt")
        if any(not 0 <= token < self.tokenizer.n_vocab for token in prompt):
            raise BadRequest(f"prompt token ids must be within [0, {self.tokenizer.n_vocab})", "prompt")
        room = self.max_ctx - len(prompt)
        if room < 1 or (max_tokens is not None and max_tokens > room):
            wanted = len(prompt) + (max_tokens or 1)
            raise BadRequest(f"the context holds {self.max_ctx} tokens; this request needs {wanted} "
                             f"({len(prompt)} in the prompt)", "max_tokens" if room >= 1 else "prompt",
                             "context_length_exceeded")
        return room if max_tokens is None else max_tokens

    async def generate(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Chunk]:
        """Chunks of the completion; the last one carries ``finish_reason`` ("stop" or "length").
        The whole sequence runs in one call on the engine's thread (``_sequence``), which hands
        each chunk over as it is ready: no thread hop per token. A consumer that stops early (a
        client gone mid-stream) stops the sequence at its next token."""
        async with self.lock:
            self.counters.requests += 1
            self.counters.prompt_tokens += len(prompt)
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
            cancelled = threading.Event()
            job = self._executor.submit(self._sequence, prompt, sampling,
                                        lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item), cancelled)
            try:
                while True:
                    chunk = await chunks.get()
                    if isinstance(chunk, BaseException):
                        raise chunk
                    yield chunk
                    if chunk.finish_reason is not None:
                        return
            finally:
                cancelled.set()
                await asyncio.wrap_future(job)  # the engine is free before the next sequence

    def _sequence(self, prompt: list[int], sampling: Sampling, put: Callable[[Chunk | BaseException], None],
                  cancelled: threading.Event) -> None:
        """One sequence on the engine's thread: prefill, then a token at a time until an end
        token, a stop string or ``max_tokens``; each chunk goes to ``put`` (an error too)."""
        try:
            text = TextStream(self.tokenizer.piece, sampling.stop)
            sample = sampling.temperature > 0
            token = self._start(prompt, sampling)
            generated = 0
            while not cancelled.is_set():
                if not sampling.ignore_eos and self.tokenizer.is_end(token):
                    put(Chunk(text.rest(), finish_reason="stop"))
                    return
                generated += 1
                self.counters.completion_tokens += 1
                delta = text.add(token)
                if text.stopped:
                    put(Chunk(delta, [token], "stop"))
                    return
                if generated == sampling.max_tokens:
                    put(Chunk(delta + text.rest(), [token], "length"))
                    return
                put(Chunk(delta, [token]))
                if time.monotonic() - self._saved_at >= self.save_every:
                    self.save_routing()  # a long sequence saves as it goes
                token = self._next(sample)
        except BaseException as exc:  # noqa: BLE001 - handed to the request, which raises it
            put(exc)
