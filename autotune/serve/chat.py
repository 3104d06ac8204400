"""Chat messages to one prompt: the GGUF's own template (``tokenizer.chat_template``, Jinja, run
sandboxed as Hugging Face's tokenizers run it) or, where the file has none, ChatML; and a
prompt's text to its token ids. ``autotune serve`` and the tuner's workloads share them, so a
workload is tokenized as the server tokenizes its requests."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from autotune.errors import AutotuneError

log = logging.getLogger(__name__)

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_STOP = "<|im_end|>"  # where the vocabulary lacks it as a control token, it arrives as text


class ChatError(AutotuneError):
    """Messages the template refuses (it raised, or could not render them)."""


def gguf_chat_fields(path: str | Path) -> tuple[str | None, dict[str, int]]:
    """The GGUF's chat template (None without one) and its BOS and EOS token ids by template
    variable (``bos_token``, ``eos_token``), where the file names them."""
    from autotune.model_info import open_gguf

    fields = open_gguf(path).fields
    template = fields.get("tokenizer.chat_template")
    ids = {name: int(fields[f"tokenizer.ggml.{name}_id"].contents()) for name in ("bos_token", "eos_token")
           if f"tokenizer.ggml.{name}_id" in fields}
    return (str(template.contents()) if template is not None else None), ids


def _raise(message: str) -> None:
    raise ChatError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class ChatTemplate:
    """``render(messages)``: the prompt that asks the model for the assistant's next turn."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self.chatml = source is None
        self.template = env.from_string(CHATML if source is None else source)
        self.tokens = {"bos_token": bos_token, "eos_token": eos_token}

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings the template implies beyond the vocabulary's end-of-generation tokens."""
        return (CHATML_STOP,) if self.chatml else ()

    def render(self, messages: list[dict[str, Any]]) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.tokens)
        except TemplateError as exc:
            raise ChatError(f"the chat template cannot render these messages: {exc}") from None


def model_chat_template(path: str | Path, token_text: Callable[[int], str]) -> ChatTemplate:
    """The GGUF's template, its BOS and EOS tokens written as ``token_text`` writes them;
    ChatML where the file has none or this Jinja cannot parse it."""
    source, ids = gguf_chat_fields(path)
    tokens = {name: token_text(token) for name, token in ids.items()}
    try:
        return ChatTemplate(source, **tokens)
    except Exception as exc:  # noqa: BLE001 - a template this Jinja cannot parse: ChatML serves instead
        log.warning("the GGUF's chat template does not parse (%s); using ChatML", exc)
        return ChatTemplate(None, **tokens)


class PromptTokenizer(Protocol):
    bos_id: int | None

    def encode(self, text: str, special: bool = True) -> list[int]: ...


def prompt_ids(tokenizer: PromptTokenizer, text: str) -> list[int]:
    """``text`` as a prompt: its tokens, after the vocabulary's BOS where it asks for one (once:
    a template may have written it already)."""
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    return [bos] + ids if bos is not None and ids[:1] != [bos] else ids
