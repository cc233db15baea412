"""Incremental detokenizing: text for new tokens, whole characters only.

Decoding one token at a time breaks multi-byte characters (a byte-level BPE
token may hold half of one) and word boundaries (some tokenizers decide a
leading space from the token before). So each step decodes a short window of
recent tokens twice, without and with the new ones, and emits the difference,
holding it back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # tokens of context before the new ones, enough for word boundaries


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Feed token ids with :meth:`add`; it returns the text they complete. :meth:`flush` ends the stream."""

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.read_offset = len(self.ids)  # tokens before this are already emitted as text (or are the prompt)
        self.prefix_offset = max(self.read_offset - CONTEXT_TOKENS, 0)

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        return self._emit(final=False)

    def feed(self, token: int) -> None:
        """Take a token now and its text later (:meth:`text`): a response's tokens are decoded in one go."""
        self.ids.append(token)

    def text(self, final: bool = False) -> str:
        """The text the tokens fed since the last call complete; ``final``: nothing held back (:meth:`flush`)."""
        return self._emit(final)

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end comes out as U+FFFD)."""
        return self._emit(final=True)

    def windows(self) -> tuple[list[int], list[int]]:
        """The ids to decode: the context alone, and the context with the new tokens."""
        return self.ids[self.prefix_offset:self.read_offset], self.ids[self.prefix_offset:]

    def _emit(self, final: bool) -> str:
        before, after = self.windows()
        return self.accept(self.tokenizer.decode(before, skip_special_tokens=True),
                           self.tokenizer.decode(after, skip_special_tokens=True), final)

    def accept(self, prefix: str, text: str, final: bool = False) -> str:
        """The new text, given the two windows decoded; moves the offsets when it emits."""
        if len(text) <= len(prefix) or (text.endswith(REPLACEMENT) and not final):
            return ""
        delta = text[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

