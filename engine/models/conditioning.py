"""How a loaded Stable Diffusion or SDXL pipeline conditions its UNet, for code that runs the
text encoders or the UNet outside the pipeline's own ``__call__`` (attention capture's class
prompts, the trained heads' Eq. 4 features, class-name embeddings).

- SD: cross-attention keys come from ``text_encoder(ids)[0]`` (B, L, D).
- SDXL (Podell et al. 2023, Sec. 2.1-2.2): the penultimate hidden states of ``text_encoder``
  (CLIP ViT-L, 768) and ``text_encoder_2`` (OpenCLIP bigG, 1280) are concatenated along
  channels, (B, L, 768 + 1280), exactly what ``StableDiffusionXLPipeline.encode_prompt`` builds;
  the UNet also takes ``added_cond_kwargs``: ``text_embeds`` (B, 1280), the second encoder's
  pooled projection, and ``time_ids`` (B, 6), ``original_size + crop_top_left + target_size``
  in pixels, each embedded sinusoidally and added to the timestep embedding.
"""

from __future__ import annotations

__all__ = ["is_sdxl", "text_encoders", "encode_token_ids", "unet_conditioning", "size_conditioning"]


def is_sdxl(pipe) -> bool:
    """True for a pipeline with SDXL's two text encoders (``text_encoder_2``)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def text_encoders(pipe) -> list[tuple[object, object]]:
    """(tokenizer, text encoder) pairs whose outputs the UNet's cross-attention sees, in the
    order they are concatenated."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if is_sdxl(pipe):
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def encode_token_ids(pipe, ids: list) -> object:
    """Cross-attention context for token ids, one (B, L) long tensor per ``text_encoders`` pair
    (same B and L): (B, L, D) in the encoders' dtype, D = ``unet.config.cross_attention_dim``.
    Run under ``torch.no_grad()`` by the caller."""
    import torch

    pairs = text_encoders(pipe)
    if len(ids) != len(pairs):
        raise ValueError(f"expected token ids for {len(pairs)} text encoder(s), got {len(ids)}")
    if not is_sdxl(pipe):
        encoder = pairs[0][1]
        return encoder(ids[0].to(encoder.device))[0]
    return torch.cat([encoder(i.to(encoder.device), output_hidden_states=True).hidden_states[-2]
                      for (_, encoder), i in zip(pairs, ids)], dim=-1)


def size_conditioning(pipe, size: int) -> dict:
    """SDXL's size and crop conditioning for square ``size``-pixel images generated uncropped
    (pipeline ``__call__`` arguments); {} for SD."""
    if not is_sdxl(pipe):
        return {}
    return {"original_size": (size, size), "target_size": (size, size), "crops_coords_top_left": (0, 0)}


def unet_conditioning(pipe, prompts: list[str], size: int) -> dict:
    """Keyword arguments for ``pipe.unet(latents, t, **kwargs)`` conditioned on ``prompts``
    without CFG: ``encoder_hidden_states`` (B, L, D) and, for SDXL, ``added_cond_kwargs`` with the
    pooled text embedding and the time ids of ``size_conditioning``. Run under ``no_grad``."""
    if not is_sdxl(pipe):
        embeds, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
        return {"encoder_hidden_states": embeds}
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=pipe.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    sizes = size_conditioning(pipe, size)
    time_ids = pipe._get_add_time_ids(sizes["original_size"], sizes["crops_coords_top_left"], sizes["target_size"],
                                      dtype=embeds.dtype,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return {"encoder_hidden_states": embeds,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.to(pipe.device).repeat(len(prompts), 1)}}
