"""A CLIP BPE tokenizer whose vocabulary is the shapes world's words.

Every known word is one token; any other word still tokenizes (into pieces or letters),
so prompts never fail. The merges are learned deterministically, so the ids are stable.
"""

from __future__ import annotations

import string

__all__ = ["world_words", "build_tokenizer"]

SPECIAL = ("<|startoftext|>", "<|endoftext|>")
LETTERS = string.ascii_lowercase + string.digits + ",.;:'!?-"


def world_words() -> list[str]:
    """Words of world captions and of the engine's prompt templates."""
    from ..world.render import caption_vocabulary

    templates = "photograph photo picture image of with in the one".split()
    return sorted(set(caption_vocabulary()) | set(templates))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Classic BPE learning, deterministic: merge the most frequent adjacent pair (ties broken
    by the pair itself) until every word is one symbol. Replaying the merges by rank, as
    CLIP's BPE does, turns each of these words into a single token.
    """
    from collections import Counter

    pieces = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for k, p in enumerate(pieces):
            merged, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    merged.append(p[i] + p[i + 1])
                    i += 2
                else:
                    merged.append(p[i])
                    i += 1
            pieces[k] = merged


def build_tokenizer(max_length: int = 32):
    """CLIP's tokenizer with the world's vocabulary: the same ids on every machine, every time."""
    from transformers import CLIPTokenizer

    merges = learn_merges(world_words())
    vocab: dict[str, int] = {}
    for token in (*LETTERS, *(c + "</w>" for c in LETTERS), *(a + b for a, b in merges), *SPECIAL):
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
