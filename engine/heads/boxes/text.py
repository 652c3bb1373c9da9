"""Class names as the open-vocabulary grounding head reads them: through the generation model's
own text encoder."""

from __future__ import annotations

__all__ = ["class_text"]


def class_text(pipe, names: list[str]):
    """(len(names), text width): each name through the pipeline's own text encoder(s) as
    ``[BOS] name [EOS]``, its output averaged over the name's sub-tokens (SDXL: both encoders'
    penultimate states concatenated, ``models.conditioning.encode_token_ids``)."""
    import torch

    from ...models.conditioning import encode_token_ids, text_encoders

    tokenizers, rows = [t for t, _ in text_encoders(pipe)], []
    with torch.no_grad():
        for name in names:
            pieces = [t(name.replace("_", " "), add_special_tokens=False).input_ids for t in tokenizers]
            ids = [torch.tensor([[t.bos_token_id, *p, t.eos_token_id]]) for t, p in zip(tokenizers, pieces)]
            rows.append(encode_token_ids(pipe, ids)[0, 1:1 + len(pieces[0])].float().mean(0))
    return torch.stack(rows)
