"""UNet feature pyramids for trained label heads (DiffusionEngine, section 3.2).

Forward hooks on the UNet's down, mid and up blocks (not a fork) keep the latest output of
each block; outputs of the same spatial size are concatenated along channels into one
pyramid level, keyed by its stride in image pixels:

    capture = PyramidCapture(unet, vae_scale_factor)
    unet(...)                                 # any call: at generation, the last step's
    pyramid = capture.pyramid(rows=slice(-B, None))   # conditional half; {stride: (B, C, h, w)}

``simulated_last_step`` gives the training-time features of Eq. 4: a real image encoded,
noised to t = 1 and passed once through the UNet with the unconditional embedding.
"""

from __future__ import annotations

__all__ = ["PyramidCapture", "simulated_last_step", "simulated_features", "SIMULATED"]

SIMULATED = "simulated_features"  # the key of each generated image's Eq. 4 pyramid in its extras


class PyramidCapture:
    def __init__(self, unet, vae_scale_factor: int):
        self.vae_scale_factor = vae_scale_factor
        self.latent_size = unet.config.sample_size
        self._outputs: dict[str, object] = {}
        blocks = [*(f"down_blocks.{i}" for i in range(len(unet.down_blocks))), "mid_block",
                  *(f"up_blocks.{i}" for i in range(len(unet.up_blocks)))]
        self._handles = [unet.get_submodule(name).register_forward_hook(self._keeper(name)) for name in blocks]

    def _keeper(self, name: str):
        def keep(module, args, output) -> None:
            self._outputs[name] = output[0] if isinstance(output, tuple) else output  # down blocks: (h, skips)
        return keep

    def pyramid(self, rows: slice = slice(None)) -> dict[int, object]:
        """The last UNet call's block outputs, grouped by size: {stride: (rows, channels, h, w)}."""
        import torch

        levels: dict[int, list] = {}
        for name, tensor in self._outputs.items():
            levels.setdefault(tensor.shape[-1], []).append(tensor[rows])
        return {self.latent_size * self.vae_scale_factor // side: torch.cat(parts, dim=1)
                for side, parts in sorted(levels.items(), reverse=True)}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def simulated_last_step(pipe, capture: PyramidCapture, images, generator=None) -> dict[int, object]:
    """Eq. 4: features of the last denoising step for real images (uint8 or float in [0, 1],
    (B, 3, H, W)): z0 = E(x), z1 = forward diffusion to t = 1, one UNet pass with the
    unconditional (empty-prompt) embedding (SD or SDXL: ``models.conditioning.unet_conditioning``)."""
    import torch
    from diffusers import DDPMScheduler

    from ...models.conditioning import unet_conditioning

    # Eq. 1 in closed form, from the training schedule: a sampler's add_noise (DPM-Solver's) looks
    # t up in its own inference timesteps and can land far noisier than t = 1.
    forward = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        x = images.to(pipe.device, pipe.vae.dtype)
        x = x / 255 if images.dtype == torch.uint8 else x
        z0 = pipe.vae.encode(x * 2 - 1).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = torch.ones(len(z0), dtype=torch.long, device=z0.device)
        z1 = forward.add_noise(z0, noise, t)
        # the empty prompt; on SDXL with its pooled embedding and the image's size conditioning
        pipe.unet(z1, t, **unet_conditioning(pipe, [""] * len(z0), x.shape[-1]))
    return capture.pyramid()


def simulated_features(pipe, capture: PyramidCapture, generated: list, seed: int) -> dict[int, object]:
    """Eq. 4 features of generated images (``Generated`` with an image), each image's kept in its
    ``extras[SIMULATED]`` so that every head reading the same images computes them once; returns
    the batch's pyramid. ``seed`` (a request's) makes a rerun draw the same noise."""
    import numpy as np
    import torch

    todo = [g for g in generated if SIMULATED not in g.extras]
    if todo:
        images = torch.from_numpy(np.stack([g.image for g in todo])).permute(0, 3, 1, 2)
        pyramid = simulated_last_step(pipe, capture, images, torch.Generator(pipe.device).manual_seed(seed))
        for i, g in enumerate(todo):
            g.extras[SIMULATED] = {s: level[i] for s, level in pyramid.items()}
    return {s: torch.stack([g.extras[SIMULATED][s] for g in generated]) for s in generated[0].extras[SIMULATED]}
