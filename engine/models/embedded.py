"""The embedded model: Stable Diffusion's architecture, sized for the shapes world.

64 px images, a VAE with downsampling factor 4 (16x16x4 latents, so an object of 11-27 px
spans 3-7 latent cells), a CLIP text encoder over the world's vocabulary, and a UNet with
cross-attention at 16x16 and 8x8 (the analogues of SD's 64/32 px-latent attention layers).
"""

from __future__ import annotations

from .shipped import CLIP_DIR, CONTROLNET_DIR, SHAPES_DIR

__all__ = ["EMBEDDED_MODELS", "EMBEDDED_CONTROLNETS", "CLIP_DIR", "IMAGE_SIZE", "MODEL_WORLD", "model_world", "NAMED_WORLDS", "named_world", "vae_config", "unet_config",
           "text_encoder_config"]

IMAGE_SIZE = 64
LATENT_SIZE = 16
TEXT_WIDTH = 128
MAX_TOKENS = 32
EMBEDDED_MODELS = {"shapes": SHAPES_DIR}
EMBEDDED_CONTROLNETS = {"shapes": CONTROLNET_DIR}
# The training world of embedded:shapes: at most 3 objects of 19-35 px (5-9 latent cells), so a
# shape's outline, not only its colour, carries enough of the loss for the UNet to learn the class names.
MODEL_WORLD = {"max_objects": 3, "min_scale": 0.3, "max_scale": 0.55}


def model_world(**world):
    """The world the embedded model is trained on (``MODEL_WORLD``, overridden by ``world``), so
    generated and rendered images are comparable."""
    from ..world import WorldConfig

    return WorldConfig(**{"size": IMAGE_SIZE, **MODEL_WORLD, **world})


# rendered worlds by name: "model", the embedded model's own (``model_world``: at most 3 objects of
# 30-55% of the image); "default", ``dde world export``'s defaults (up to 4 objects of 18-42%), the
# scenes the demo and users take as references
NAMED_WORLDS = ("model", "default")


def named_world(name: str, size: int = IMAGE_SIZE):
    """The ``WorldConfig`` of a ``NAMED_WORLDS`` entry at ``size`` px."""
    from ..world import WorldConfig

    return model_world(size=size) if name == "model" else WorldConfig(size=size)


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8)


def unet_config(widths: tuple[int, int, int] = (32, 64, 128)) -> dict:
    return dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=widths,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=16)


def text_encoder_config(vocab_size: int, bos: int, eos: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, projection_dim=TEXT_WIDTH)


def scheduler_config() -> dict:
    """SD's DDPM training schedule, with v-prediction (faster to train at this size)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", clip_sample=False, steps_offset=1)
