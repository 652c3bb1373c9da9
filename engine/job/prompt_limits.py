"""Prompts the text encoder cannot read whole (case 31), checked before anything is generated.

A text encoder reads a fixed number of tokens (77 on SD's CLIP, 32 on the embedded model) and
the pipeline cuts the rest. A cut that keeps every class word only loses description: such
prompts are counted and shown in ``dde status``, the card and the report. A cut that drops a
class word makes an image without the class while its labels claim it; so does an attention
head whose class-only prompt (``[BOS c1 ... cM EOS]``) has no room for a class. Such a prompt
is an error before anything is written (``long_prompts: error``, the default), or is left out
of the pool and counted (``long_prompts: reject``).

The check runs with every tokenizer the backend encodes prompts with (SDXL has two), on the
text the backend sends (with its ``quality_suffix``). What it found is recorded with the job's
inputs, so a resume plans from the same pool, and a tokenizer that changed is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..backends.base import TextEncoders
from ..errors import UserError
from ..spec import JobSpec
from .classnames import ClassMatcher
from .prompts import PromptItem

__all__ = ["limit_prompts", "describe_limit", "RECORD"]

RECORD = "prompts.token_limit"  # the key of the check's record among the job's inputs


@dataclass
class _Finding:
    truncated: bool = False
    cut: list[str] = field(default_factory=list)  # "'star' at token 52" ...


def _tokens(tokenizer, text: str) -> int:
    # with the start and end tokens, as the encoder reads them; verbose=False: lengths past the limit are the point
    return len(tokenizer(text, verbose=False).input_ids)


def _check(item: PromptItem, encoders: TextEncoders, matcher: ClassMatcher) -> _Finding:
    finding = _Finding()
    text = item.prompt + encoders.suffix
    names = list(dict.fromkeys(item.classes))
    for tokenizer in encoders.tokenizers:
        limit = tokenizer.model_max_length
        if _tokens(tokenizer, text) > limit:
            finding.truncated = True
            for name, end in matcher.first_mentions(text).items():
                if name in names and (at := _tokens(tokenizer, text[:end])) > limit:
                    finding.cut.append(f"{name!r} ends at token {at} of {_tokens(tokenizer, text)}, limit {limit}")
        if encoders.class_prompts:
            used = 2  # the start and end tokens
            for name in names:
                used += len(tokenizer(name.replace("_", " "), add_special_tokens=False).input_ids)
                if used > limit:
                    finding.cut.append(f"{name!r} does not fit the attention head's class-only prompt "
                                       f"({used} tokens, limit {limit})")
    return finding


def _describe(item: PromptItem) -> str:
    where = f"reference {item.reference_id}" if item.reference_id is not None else "prompt"
    return f"{where} {item.prompt[:60] + ('...' if len(item.prompt) > 60 else '')!r}"


def describe_limit(record: dict | None) -> str | None:
    """One line for status, the card and the report; None when every prompt was read whole."""
    if not record or not (record["truncated"] or record["left_out"]):
        return None
    return (f"{record['truncated']} truncated at the text encoder's {record['limit']}-token limit (every class word "
            f"kept), {record['left_out']} left out (a class word past it)")


def _findings(pool: list[PromptItem], encoders: TextEncoders, spec: JobSpec) -> list[_Finding]:
    """One finding per pool item; items share prompts (references reused, JSONL lines repeated)."""
    matcher = ClassMatcher(spec.class_specs)
    by_prompt: dict[tuple, _Finding] = {}
    for item in pool:
        if (item.prompt, item.classes) not in by_prompt:
            by_prompt[item.prompt, item.classes] = _check(item, encoders, matcher)
    return [by_prompt[item.prompt, item.classes] for item in pool]


def limit_prompts(spec: JobSpec, pool: list[PromptItem], inputs: dict) -> list[PromptItem]:
    """The pool the job plans from: ``pool`` checked against the backend's text encoders."""
    encoders = spec.generator.component.text_encoders(spec)
    if encoders is None or not encoders.tokenizers:
        return pool
    encoders.class_prompts = spec.label_head.component.builds_class_prompts
    findings = _findings(pool, encoders, spec)
    cut = [(i, f.cut[0]) for i, f in enumerate(findings) if f.cut]
    limit = min(t.model_max_length for t in encoders.tokenizers)
    if cut and (spec.long_prompts == "error" or len(cut) == len(pool)):
        index, reason = cut[0]
        raise UserError(f"prompts: expected every class word within the text encoder's {limit}-token limit "
                        f"({encoders.name}), got {len(cut)} of {len(pool)} prompt(s) where one falls past it, e.g. "
                        f"{_describe(pool[index])}: {reason}. Shorten them, put class words first"
                        + (", or set long_prompts: reject to leave them out" if len(cut) < len(pool) else ""))
    kept = [item for item, f in zip(pool, findings) if not f.cut]
    inputs[RECORD] = {"uri": encoders.name, "size": len(kept), "unit": "prompts kept", "limit": limit,
                      "truncated": sum(f.truncated for f in findings if not f.cut), "left_out": len(cut),
                      "examples": [f"{_describe(pool[i])}: {reason}" for i, reason in cut[:3]],
                      "sha256": hashlib.sha256(repr([i for i, _ in cut]).encode()).hexdigest()}
    return kept
