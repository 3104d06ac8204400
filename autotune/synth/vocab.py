"""A byte-level BPE vocabulary (GPT-2 style) written into the file, so no vocab file is needed.

256 byte tokens, merges for common English pairs, three Qwen control tokens, and
"<unused_N>" padding up to the preset's vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import TokenType

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_COMMON_WORDS = (
    "the of and to in is it you that he was for on are with as his they at be this from "
    "have or by one had not but what all were when we there can an your which their said "
    "if do will each about how up out them then she many some so these would other into "
    "has more her two like him see time could no make than first been its who now people"
).split()


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@dataclass
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    bos_id: int


def build_vocabulary(n_vocab: int) -> Vocabulary:
    """Byte tokens, merged words (as far as the size allows), control tokens, padding."""
    byte_chars = _byte_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    known = set(tokens)
    merges: list[str] = []
    budget = n_vocab - len(tokens) - len(CONTROL_TOKENS)
    space = byte_chars[ord(" ")]
    for word in _COMMON_WORDS:
        text = space + word  # merged left to right: "Ġt"+"h" -> "Ġth", ...
        for end in range(2, len(text) + 1):
            piece = text[:end]
            if piece in known:
                continue
            if len(merges) >= budget:
                break
            merges.append(f"{text[:end - 1]} {text[end - 1]}")
            tokens.append(piece)
            known.add(piece)
    token_types = [TokenType.NORMAL] * len(tokens)
    first_control = len(tokens)
    tokens.extend(CONTROL_TOKENS)
    token_types.extend([TokenType.CONTROL] * len(CONTROL_TOKENS))
    for index in range(n_vocab - len(tokens)):
        tokens.append(f"<unused_{index}>")
        token_types.append(TokenType.UNUSED)
    return Vocabulary(tokens, [int(t) for t in token_types], merges, eos_id=first_control, bos_id=first_control)
