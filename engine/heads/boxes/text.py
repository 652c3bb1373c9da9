"""Class names as the open-vocabulary grounding head reads them: through the generation model's
own text encoder."""

from __future__ import annotations

__all__ = ["class_text"]


def class_text(pipe, names: list[str]):
    """(len(names), text width): each name through the pipeline's own text encoder as
    ``[BOS] name [EOS]``, its output averaged over the name's sub-tokens."""
    import torch

    tokenizer, rows = pipe.tokenizer, []
    with torch.no_grad():
        for name in names:
            pieces = tokenizer(name.replace("_", " "), add_special_tokens=False).input_ids
            ids = torch.tensor([[tokenizer.bos_token_id, *pieces, tokenizer.eos_token_id]], device=pipe.device)
            rows.append(pipe.text_encoder(ids)[0][0, 1:1 + len(pieces)].float().mean(0))
    return torch.stack(rows)
