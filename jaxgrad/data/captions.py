"""Captions for labelled images and a word-level tokenizer built from them.

CLIP learns from (image, caption) pairs. A labelled image set (CIFAR-10, an image folder, the
synthetic images) becomes one by writing each label into a caption template, "a photo of a
{label}." and a few dozen variations (the prompt set of CLIP's zero-shot evaluation is the model
for them). The templates are tokenised once into a ``[T, C, L]`` table; a training step then
draws a template per image on the device (``table[template, label]``), so every epoch sees
fresh wording without any host work.

The tokenizer is deliberately simple: lower-case words and punctuation, ``<pad>`` = 0,
``<unk>`` = 1 for anything not seen when the vocabulary was built, fixed length ``L`` with
truncation, and a boolean mask marking the real tokens (the text encoder pools over it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PAD",
    "TEMPLATES",
    "UNK",
    "Tokenizer",
    "caption_table",
    "format_caption",
    "words",
]

PAD, UNK = "<pad>", "<unk>"

#: Caption templates; the first is the single zero-shot prompt, all of them form the ensemble.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {label}.",
    "a blurry photo of a {label}.",
    "a low resolution photo of the {label}.",
    "a close-up photo of a {label}.",
    "a cropped photo of the {label}.",
    "a bright photo of a {label}.",
    "a dark photo of the {label}.",
    "a good photo of a {label}.",
    "a photo of the small {label}.",
    "a photo of the big {label}.",
    "a pixelated photo of a {label}.",
    "a jpeg corrupted photo of the {label}.",
    "a snapshot of a {label}.",
    "an image of a {label}.",
    "a picture of the {label}.",
    "this is a {label}.",
    "there is a {label} in this picture.",
    "a tiny photo of a {label}.",
)

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """``"A photo of a cat."`` → ``["a", "photo", "of", "a", "cat", "."]``."""
    return _WORD.findall(text.lower())


def format_caption(template: str, label: str) -> str:
    """Fill a template; ``_`` in class names (``"maple_tree"``) becomes a space."""
    return template.format(label=label.replace("_", " "))


@dataclass(frozen=True)
class Tokenizer:
    """Word-level tokenizer: ``vocab[0] == "<pad>"``, ``vocab[1] == "<unk>"``."""

    vocab: tuple[str, ...]

    def __post_init__(self):
        if self.vocab[:2] != (PAD, UNK):
            raise ValueError(f"vocab must start with ({PAD!r}, {UNK!r}), got {self.vocab[:2]}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab has duplicate entries")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.vocab)})

    @classmethod
    def build(cls, texts: Iterable[str]) -> Tokenizer:
        """Vocabulary of the words in ``texts``, most frequent first (ties alphabetical, so the
        result is deterministic)."""
        counts = Counter(w for t in texts for w in words(t))
        return cls((PAD, UNK, *sorted(counts, key=lambda w: (-counts[w], w))))

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], *, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[N, max_len]`` int32 (padded with 0, truncated) and mask ``[N, max_len]``.

        Unknown words map to ``<unk>``; the mask is True on real tokens. A text with no tokens
        at all is rejected: the encoder's masked mean would have nothing to pool.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; wrap a single one: encode([text])")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        ids = np.zeros((len(texts), max_len), np.int32)
        for row, text in enumerate(texts):
            toks = [self._index.get(w, 1) for w in words(text)][:max_len]
            if not toks:
                raise ValueError(f"text {row} ({text!r}) has no tokens")
            ids[row, : len(toks)] = toks
        return ids, ids != 0

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to words, padding dropped (inverse of encode up to <unk> and spacing)."""
        return " ".join(self.vocab[i] for i in ids if i != 0)


def caption_table(
    class_names: Sequence[str],
    *,
    templates: Sequence[str] = TEMPLATES,
    tokenizer: Tokenizer | None = None,
    max_len: int = 16,
) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """Every (template, class) caption tokenised: ``(tokenizer, ids [T, C, L], mask [T, C, L])``.

    Builds the tokenizer from these captions when none is given. Raises ValueError when
    ``max_len`` would cut a caption short (the class name could be the part that is lost).
    """
    if not class_names or not templates:
        raise ValueError("caption_table needs at least one class name and one template")
    texts = [format_caption(t, c) for t in templates for c in class_names]
    longest = max(len(words(t)) for t in texts)
    if longest > max_len:
        raise ValueError(f"captions need up to {longest} tokens; raise max_len (got {max_len})")
    tok = tokenizer if tokenizer is not None else Tokenizer.build(texts)
    ids, mask = tok.encode(texts, max_len=max_len)
    shape = (len(templates), len(class_names), max_len)
    return tok, ids.reshape(shape), mask.reshape(shape)
