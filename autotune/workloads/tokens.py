"""A prompt set as the model reads it: token ids of the GGUF's own tokenizer, chats rendered by
its chat template (``autotune.serve.chat``: as ``autotune serve`` does), in a child process
(the parent never imports llama_cpp), and the ``Workload`` the tuner measures with them.

Also the child's target: ``setup`` loads the vocabulary, ``run`` tokenizes an item's entries.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from statistics import fmean
from typing import Any

from autotune.backends.base import Workload
from autotune.errors import AutotuneError
from autotune.isolation.trial_process import run_isolated
from autotune.workloads.prompt_file import PromptSet

TARGET = "autotune.workloads.tokens"
DEADLINE_S = 120.0
_ERROR = re.compile(r"\w+(?:Error|Exception): (.*)$")


def setup(common: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from autotune.cache_runtime.tokenizer import Tokenizer
    from autotune.serve.chat import model_chat_template

    tokenizer = Tokenizer(common["model_path"])
    return (tokenizer, model_chat_template(common["model_path"], tokenizer.text)), {}


def run(state: Any, item: dict[str, Any]) -> dict[str, Any]:
    """``item``: entries and their line numbers; the token ids of each."""
    from autotune.serve.chat import prompt_ids

    tokenizer, template = state
    tokens = []
    for entry, line in zip(item["entries"], item["lines"], strict=True):
        try:
            text = entry["prompt"] if "prompt" in entry else template.render(entry["messages"])
        except AutotuneError as exc:
            raise AutotuneError(f"line {line}: {exc}") from None
        tokens.append(prompt_ids(tokenizer, text))
    return {"extra": {"tokens": tokens}}


def tokenize(model_path: Path, prompts: PromptSet) -> list[list[int]]:
    """The token ids of each prompt, as ``autotune serve`` would tokenize it for this model."""
    item = {"entries": list(prompts.entries), "lines": list(prompts.lines)}
    [result] = run_isolated(TARGET, {"model_path": str(model_path)}, [item], DEADLINE_S)
    if not result.ok:
        last = result.message.strip().splitlines()[-1]
        reason = match.group(1) if (match := _ERROR.search(last)) else last
        raise AutotuneError(f"cannot tokenize the prompts of {prompts.name} with {model_path.name}: {reason} "
                            "(--prompt-tokens N measures random prompts instead)")
    return result.extra["tokens"]


def prompt_workload(model_path: Path, prompts: PromptSet, lengths: Workload) -> Workload:
    """The workload of ``prompts`` for this model, with the objective, generated tokens,
    requests and context of ``lengths``; each prompt and the generated tokens must fit the context."""
    tokens = tokenize(model_path, prompts)
    for ids, line in zip(tokens, prompts.lines, strict=True):
        if len(ids) + lengths.n_gen > lengths.n_ctx:
            raise AutotuneError(f"{prompts.name} line {line}: the prompt is {len(ids)} tokens; with {lengths.n_gen} "
                                f"generated that is more than --ctx {lengths.n_ctx}")
    workload = replace(lengths, prompts=tuple(map(tuple, tokens)), name=prompts.name, digest=prompts.digest,
                       trace=prompts.trace)
    return replace(workload, n_prompt=max(1, round(fmean(map(len, workload.measured_prompts())))))
