"""A CLIP BPE tokenizer whose vocabulary is the shapes world's words.

Every known word is one token (its BPE merges are chained left to right); any other
word still tokenizes, letter by letter, so prompts never fail.
"""

from __future__ import annotations

import json
import string

__all__ = ["world_words", "build_tokenizer"]

SPECIAL = ("<|startoftext|>", "<|endoftext|>")
LETTERS = string.ascii_lowercase + string.digits + ",.;:'!?-"


def world_words() -> list[str]:
    """Words of world captions and of the engine's prompt templates."""
    from ..world.render import caption_vocabulary

    templates = "photograph photo picture image of with in the one".split()
    return sorted(set(caption_vocabulary()) | set(templates))


def build_tokenizer(max_length: int = 32):
    """Learn BPE merges on the world's words until each is a single token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    words = world_words()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False, special_tokens=[],
                                  initial_alphabet=list(LETTERS), end_of_word_suffix="</w>")
    bpe.train_from_iterator(words + list(LETTERS), trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    vocab = dict(learned["vocab"])
    for token in (*LETTERS, *(c + "</w>" for c in LETTERS), *SPECIAL):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
