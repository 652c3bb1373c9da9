"""Class names as the open-vocabulary grounding head reads them: through the generation model's
own text encoder."""

from __future__ import annotations

__all__ = ["class_text"]


def class_text(pipe, names: list[str], template: str = "{}"):
    """float32 (len(names), text width): each name through the pipeline's own text encoder(s), in
    ``template`` (``"{}"``: ``[BOS] name [EOS]``, as the shipped grounding head was trained;
    InstaGen's ``"a photograph of a {}"`` gives ``[BOS] a photograph of a name [EOS]``), its
    output averaged over the name's sub-tokens only (SDXL: both encoders' penultimate states
    concatenated, ``models.conditioning.encode_token_ids``). Raises ValueError if ``template``
    does not hold ``{}`` exactly once."""
    import torch

    from ...models.conditioning import encode_token_ids, text_encoders

    if template.count("{}") != 1:
        raise ValueError(f"class template: expected exactly one '{{}}' where the class name goes, got {template!r}")
    before, after = template.split("{}")
    tokenizers, rows = [t for t, _ in text_encoders(pipe)], []

    def pieces(tokenizer, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []

    with torch.no_grad():
        for name in names:
            parts = [(pieces(t, before), pieces(t, name.replace("_", " ")), pieces(t, after)) for t in tokenizers]
            ids = [torch.tensor([[t.bos_token_id, *prefix, *middle, *suffix, t.eos_token_id]])
                   for t, (prefix, middle, suffix) in zip(tokenizers, parts)]
            start, length = 1 + len(parts[0][0]), len(parts[0][1])
            rows.append(encode_token_ids(pipe, ids)[0, start:start + length].float().mean(0))
    return torch.stack(rows)
