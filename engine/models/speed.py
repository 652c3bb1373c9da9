"""Speed options for a loaded Stable Diffusion or SDXL pipeline (the ``diffusion`` backend's
params; their measured effects are in BENCHMARKS.md, "Speed options").

- ``channels_last``: the UNet's weights and activations in NHWC, which cuDNN's convolutions
  prefer on tensor cores (diffusers' "torch2.0" guide: part of 1.59 s -> 1.07 s per A100 image).
- ``compile_unet``: ``torch.compile`` of the UNet with a mode (``default``, ``reduce-overhead``,
  ``max-autotune``); the backend runs one warm-up call at load, so compilation is not counted
  against any unit.
- ``vae_tiling`` / ``vae_slicing``: decode in overlapping tiles / one image at a time: peak memory
  for large images or batches, at some speed.
- ``step_saver="pab"``: Pyramid Attention Broadcast (Zhao et al. 2024), diffusers' own hook
  (``apply_pyramid_attention_broadcast``): inside a timestep window, each UNet attention layer
  computes on one call in ``skip`` and reuses its previous output otherwise. The DeepCache
  package is not installed here; PAB is the step-saver the pinned diffusers (0.42) offers for a
  UNet (its FirstBlockCache, FasterCache and MagCache hooks are written for transformer
  denoisers). State is per batch: ``reset_step_saver`` before every pipeline call.
"""

from __future__ import annotations

__all__ = ["apply_channels_last", "compile_unet", "apply_vae_memory", "apply_step_saver", "reset_step_saver",
           "xformers_available"]


def xformers_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xformers") is not None


def apply_channels_last(pipe) -> None:
    """UNet (and VAE) weights in channels_last memory format."""
    import torch

    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)


def compile_unet(pipe, mode: str) -> None:
    """``pipe.unet = torch.compile(pipe.unet, mode=mode)``; the first call with each new input
    shape compiles (the caller warms up)."""
    import torch

    pipe.unet = torch.compile(pipe.unet, mode=mode)


def apply_vae_memory(pipe, *, tiling: bool, slicing: bool) -> None:
    if tiling:
        pipe.vae.enable_tiling()
    if slicing:
        pipe.vae.enable_slicing()


def apply_step_saver(pipe, name: str, skip: int, timesteps: tuple[int, int]) -> None:
    """Install ``name`` ("pab") on the UNet's attention layers, self- and cross-attention alike,
    skipping within ``timesteps`` (training timesteps, exclusive bounds)."""
    from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    if name != "pab":
        raise ValueError(f"expected step saver 'pab', got {name!r}")
    unet = pipe.unet
    now = {"t": 1000}

    def remember(module, args, kwargs) -> None:  # PAB asks for the current timestep; the UNet is told it
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        now["t"] = int(t.flatten()[0]) if hasattr(t, "flatten") else int(t)

    unet.register_forward_pre_hook(remember, with_kwargs=True)
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=tuple(timesteps),
        cross_attention_block_skip_range=skip, cross_attention_timestep_skip_range=tuple(timesteps),
        current_timestep_callback=lambda: now["t"])
    apply_pyramid_attention_broadcast(unet, config)


def reset_step_saver(pipe) -> None:
    """Forget every cached attention output (a new batch: other rows, maybe another size)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(pipe.unet).reset_stateful_hooks(recurse=True)
