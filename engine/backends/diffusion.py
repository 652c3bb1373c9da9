"""``diffusion``: txt2img and img2img with any Stable Diffusion or SDXL pipeline.

The architecture comes from the model folder's ``model_index.json`` (``_class_name``) or the
``architecture`` param: SD loads a ``StableDiffusionPipeline``, SDXL a
``StableDiffusionXLPipeline`` (two text encoders; size and crop conditioning from the job's
image size: original = target = ``size``, crop (0, 0)). img2img on SDXL is the step injection
below, which is what ``StableDiffusionXLImg2ImgPipeline`` computes for the base model (no
aesthetic-score conditioning: that is the refiner's).

A batch is one pipeline call: one UNet call per step for the whole
batch with its CFG pair, one ``torch.Generator`` per image. img2img (DiffusionEngine)
draws each image's strength from the configured range with the image's own seed; a
reference enters the batch at its own start step through ``callback_on_step_end``
(noised to that step, as the img2img pipeline does), so mixed strengths share every
UNet call. Strength 1.0 is pure txt2img.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from ..output.layout import derive_seed
from ..records import Generated, ImageRequest
from .base import (ATTENTION_CAPTURE, DIFFUSERS_PIPELINE, STEP_CALLBACKS, UNET_FEATURES, Backend, StrictParams,
                   TextEncoders)

__all__ = ["DiffusionBackend"]


class DiffusionParams(StrictParams):
    model: str = Field(default="embedded:shapes", description="'embedded:shapes', a diffusers folder or a hub id.")
    architecture: str = Field(default="auto", pattern="^(auto|sd|sdxl)$",
                              description="auto: from the folder's model_index.json (_class_name); sd: "
                                          "StableDiffusionPipeline; sdxl: StableDiffusionXLPipeline.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N")
    dtype: str = Field(default="auto", pattern="^(auto|fp32|fp16|bf16)$", description="auto: fp16 on GPU, fp32 on CPU")
    attention: str = Field(default="auto", pattern="^(auto|sdpa|xformers)$",
                           description="auto: xformers on a GPU when installed, else SDPA; xformers is refused at "
                                       "spec time when not installed")
    scheduler: str = Field(default="dpmsolver++", pattern="^(dpmsolver\\+\\+|ddim|unipc|euler)$")
    steps: int = Field(default=25, ge=1, le=1000,
                       description="Sampling steps. 25 by default: against Dataset Diffusion's T = 100, the "
                                   "attention labels' mIoU moved by 0.2 points on 24+24 images, at 4x the UNet "
                                   "calls (BENCHMARKS.md, 'Paper fidelity').")
    steps_per_scheduler: dict[str, int] = Field(
        default_factory=dict, description="Denoising steps by scheduler name, overriding steps for the chosen one "
                                          "(e.g. {dpmsolver++: 20, ddim: 50, unipc: 12}).")
    channels_last: bool = Field(default=False, description="UNet and VAE in channels_last (NHWC) memory format.")
    compile: str = Field(default="off", pattern="^(off|default|reduce-overhead|max-autotune)$",
                         description="torch.compile the UNet with this mode; one warm-up call at load, not counted "
                                     "against units. Refused with heads that hook the UNet (attention capture, "
                                     "feature pyramids).")
    vae_tiling: bool = Field(default=False, description="Decode in tiles (memory for large images).")
    vae_slicing: bool = Field(default=False, description="Decode one image at a time (memory for large batches).")
    step_saver: str = Field(default="none", pattern="^(none|pab)$",
                            description="pab: Pyramid Attention Broadcast (diffusers' hook): attention layers reuse "
                                        "their output on all but one in step_saver_skip UNet calls inside "
                                        "step_saver_timesteps. Refused with attention-capture heads.")
    step_saver_skip: int = Field(default=2, ge=2, le=10)
    step_saver_timesteps: tuple[int, int] = Field(default=(100, 800),
                                                  description="Training timesteps (exclusive) where pab skips.")
    guidance_scale: float = Field(default=7.5, ge=0)
    negative_prompt: str = Field(default="", description="Used where the prompt source gives none.")
    quality_suffix: str = Field(default="", description="Appended to every prompt, e.g. ', high quality'.")
    strength: tuple[float, float] = Field(default=(0.3, 1.0), description="img2img encode ratio range per image.")
    reference_resize: str = Field(default="center_crop", pattern="^(center_crop|resize)$")
    size: int | None = Field(default=None, ge=8, description="Image side; default: the model's native size.")
    batch_size: int = Field(default=8, ge=1)
    retries: int = Field(default=1, ge=0, description="New seeds tried for a NaN or blank image before rejecting it.")

    @model_validator(mode="after")
    def _strength_range(self) -> "DiffusionParams":
        lo, hi = self.strength
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"expected 0 < strength[0] <= strength[1] <= 1, got {list(self.strength)}")
        unknown = sorted(set(self.steps_per_scheduler) - {"dpmsolver++", "ddim", "unipc", "euler"})
        if unknown or any(n < 1 for n in self.steps_per_scheduler.values()):
            raise ValueError(f"expected steps_per_scheduler keys among dpmsolver++, ddim, unipc, euler with counts "
                             f">= 1, got {self.steps_per_scheduler}")
        return self

    @property
    def sampling_steps(self) -> int:
        """The denoising steps of the chosen scheduler: ``steps_per_scheduler`` if it names it, else ``steps``."""
        return self.steps_per_scheduler.get(self.scheduler, self.steps)


def _is_degenerate(image: np.ndarray) -> str | None:
    if not np.isfinite(image).all():
        return "NaN in the decoded image"
    if float(image.max() - image.min()) < 1e-3:
        return "blank (all-constant) image"
    return None


def _start_step(strength: float | None, steps: int) -> int:
    """The denoising step at which an img2img reference enters the batch (0 for txt2img)."""
    return 0 if strength is None else steps - round(strength * steps)


class DiffusionBackend(Backend):
    Params = DiffusionParams
    offers = frozenset({DIFFUSERS_PIPELINE, UNET_FEATURES, ATTENTION_CAPTURE, STEP_CALLBACKS})

    def __init__(self, *, params: DiffusionParams, classes):
        super().__init__(params=params, classes=classes)
        self.pipe = self._load_pipeline()
        self.batch_size = params.batch_size
        self.size = params.size or self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self._apply_speed_options()

    def _apply_speed_options(self) -> None:
        """channels_last, VAE tiling/slicing, the step saver, then torch.compile with its warm-up
        call (here, at load: compilation is never timed as part of a unit)."""
        from ..models import speed

        p = self.params
        if p.channels_last:
            speed.apply_channels_last(self.pipe)
        speed.apply_vae_memory(self.pipe, tiling=p.vae_tiling, slicing=p.vae_slicing)
        if p.step_saver != "none":
            speed.apply_step_saver(self.pipe, p.step_saver, p.step_saver_skip, p.step_saver_timesteps)
        if p.compile != "off":
            speed.compile_unet(self.pipe, p.compile)
            self._warm_up()

    def _warm_up(self) -> None:
        """One full-batch pipeline call of 2 steps (compiles the UNet for the batch's shapes)."""
        from ..models.conditioning import size_conditioning

        self.pipe(prompt=["warm-up"] * self.batch_size, height=self.size, width=self.size, num_inference_steps=2,
                  guidance_scale=self.params.guidance_scale, output_type="latent",
                  **size_conditioning(self.pipe, self.size), **self._conditioning_warm_up())

    def _conditioning_warm_up(self) -> dict:
        """Extra pipeline arguments for the warm-up call (a ControlNet's blank condition); none here."""
        return {}

    def _load_pipeline(self):
        from ..models import load_pipeline

        p = self.params
        return load_pipeline(p.model, device=p.device, dtype=p.dtype, scheduler=p.scheduler, attention=p.attention,
                             architecture=p.architecture)

    def _conditioning(self, requests: list[ImageRequest]) -> dict:
        """Extra pipeline arguments for a batch (a ControlNet's condition images); none here."""
        return {}

    @property
    def model_name(self) -> str:
        return self.params.model

    @classmethod
    def check_spec(cls, spec) -> list[str]:
        """Local models must exist, with an architecture this backend loads, before any work starts;
        hub ids are checked when a worker loads them."""
        from ..errors import UserError
        from ..models import is_hub_id, local_model_problem, resolve_model
        from ..models.loading import model_architecture
        from ..models.speed import xformers_available

        params = spec.generator.config
        problems = []
        if params.attention == "xformers" and not xformers_available():
            problems.append("generator.params.attention: expected 'sdpa' or 'auto' (xformers is not installed "
                            "here), got 'xformers'; install the gpu extra (pip install 'dde[gpu]') or use 'sdpa'")
        problem = local_model_problem(params.model)
        if problem or is_hub_id(params.model):
            return problems + ([problem] if problem else [])
        try:
            model_architecture(resolve_model(params.model), params.architecture)
        except UserError as e:
            return problems + [str(e)]
        return problems

    @classmethod
    def check_head(cls, spec, needs: frozenset[str]) -> list[str]:
        """Speed options that would silently break what the head needs: a compiled UNet does not
        run the Python hooks of attention capture and feature pyramids per call, and a step saver
        skips the attention layers that capture records."""
        params, head = spec.generator.config, spec.label_head.name
        problems = []
        hooked = sorted(needs & {ATTENTION_CAPTURE, UNET_FEATURES})
        if params.compile != "off" and hooked:
            problems.append(f"generator.params.compile: expected 'off' with label head {head!r} (it needs "
                            f"{' and '.join(hooked)}: Python hooks in the UNet that a compiled UNet does not run "
                            f"per call), got {params.compile!r}; set compile: off, or use a head that reads only "
                            f"images")
        if params.step_saver != "none" and ATTENTION_CAPTURE in needs:
            problems.append(f"generator.params.step_saver: expected 'none' with label head {head!r} (it records "
                            f"every attention layer call, which {params.step_saver} skips), got "
                            f"{params.step_saver!r}; set step_saver: none")
        return problems

    @classmethod
    def text_encoders(cls, spec):
        """The pipeline's own tokenizer(s) (SDXL: ``tokenizer`` and ``tokenizer_2``), read from the
        model folder (a hub model's tokenizer files only); None, with a warning, if a hub model's
        tokenizer cannot be fetched from here."""
        import os
        import sys

        from transformers import CLIPTokenizer

        from ..models import is_hub_id, resolve_model

        params = spec.generator.config
        try:
            if is_hub_id(params.model):
                tokenizers = [CLIPTokenizer.from_pretrained(params.model, subfolder="tokenizer")]
            else:
                folder = resolve_model(params.model)
                tokenizers = [CLIPTokenizer.from_pretrained(os.path.join(folder, sub))
                              for sub in ("tokenizer", "tokenizer_2") if os.path.isdir(os.path.join(folder, sub))]
        except OSError as e:
            print(f"warning: generator.params.model: prompt lengths not checked, the tokenizer of {params.model!r} "
                  f"is not reachable here ({type(e).__name__})", file=sys.stderr)
            return None
        return TextEncoders(f"{params.model} tokenizer", tokenizers, params.quality_suffix)

    def generate(self, requests: list[ImageRequest]) -> list[Generated]:
        results: list[Generated | None] = [None] * len(requests)
        seeds = [r.seed for r in requests]
        todo = list(range(len(requests)))
        for attempt in range(self.params.retries + 1):
            images, strengths, extras = self._sample([requests[i] for i in todo], [seeds[i] for i in todo])
            retry = []
            for i, image, strength, extra in zip(todo, images, strengths, extras):
                problem = _is_degenerate(image)
                if problem is None:
                    results[i] = Generated(image=(image * 255).round().astype(np.uint8), strength=strength,
                                           extras=extra)
                elif attempt < self.params.retries:
                    seeds[i] = derive_seed(seeds[i], attempt + 1)  # a new seed derived from the old one
                    retry.append(i)
                else:
                    results[i] = Generated(image=None, reject=f"{problem} after {attempt + 1} seed(s)")
            todo = retry
            if not todo:
                break
        return results

    # ---- sampling
    def _strength(self, request: ImageRequest, seed: int) -> float | None:
        if request.reference is None:
            return None
        lo, hi = self.params.strength
        drawn = lo + (hi - lo) * np.random.default_rng(seed).random()
        steps = self.params.sampling_steps
        return max(1, int(steps * drawn)) / steps  # what the sampler actually runs: whole steps

    def _sample(self, requests: list[ImageRequest], seeds: list[int]) -> tuple[list[np.ndarray], list, list[dict]]:
        import torch

        from ..models.conditioning import size_conditioning

        pipe, p = self.pipe, self.params
        device = pipe.device
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        shape = (pipe.unet.config.in_channels, self.size // pipe.vae_scale_factor, self.size // pipe.vae_scale_factor)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, pipe.unet.dtype)
        strengths = [self._strength(r, s) for r, s in zip(requests, seeds)]
        injections = self._injections(requests, strengths, generators, latents)
        steps = p.sampling_steps
        start_steps = [_start_step(s, steps) for s in strengths]
        if p.step_saver != "none":
            from ..models.speed import reset_step_saver

            reset_step_saver(pipe)
        for observer in self.observers:
            observer.begin_batch(pipe, requests, start_steps, steps)
        images = pipe(
            prompt=[r.prompt + p.quality_suffix for r in requests],
            negative_prompt=[r.negative_prompt or p.negative_prompt for r in requests],
            height=self.size, width=self.size, num_inference_steps=steps, guidance_scale=p.guidance_scale,
            latents=latents, output_type="np",
            callback_on_step_end=injections, callback_on_step_end_tensor_inputs=["latents"],
            **size_conditioning(pipe, self.size), **self._conditioning(requests),
        ).images
        extras = [{} for _ in requests]
        for observer in self.observers:
            for extra, observed in zip(extras, observer.end_batch()):
                extra.update(observed)
        return list(images), strengths, extras

    def _injections(self, requests, strengths, generators, latents):
        """A callback that puts each reference into the batch at its start step, or None for txt2img only."""
        import torch

        steps = self.params.sampling_steps
        starts = {i: _start_step(s, steps) for i, s in enumerate(strengths) if s is not None and s < 1.0}
        if not starts:
            return None
        with torch.no_grad():
            clean = {i: self._encode_reference(requests[i].reference, generators[i]) for i in starts}
        noise = {i: torch.randn(latents.shape[1:], generator=generators[i]).to(latents) for i in starts}

        def inject(pipeline, step: int, timestep, kwargs: dict) -> dict:
            lat = kwargs["latents"]
            timesteps = pipeline.scheduler.timesteps
            for i, start in starts.items():
                if start == step + 1 and step + 1 < len(timesteps):
                    t = timesteps[step + 1].reshape(1)
                    lat[i] = pipeline.scheduler.add_noise(clean[i][None], noise[i][None], t)[0]
                    history = getattr(pipeline.scheduler, "model_outputs", None)
                    if history and history[-1] is not None:  # DPM-Solver++ keeps x0 estimates: use the reference
                        history[-1][i] = clean[i]
            return {"latents": lat}

        return inject

    def _encode_reference(self, reference: np.ndarray, generator):
        import torch
        from PIL import Image

        from ..images import fit_square

        pipe = self.pipe
        image = fit_square(Image.fromarray(reference), self.size, self.params.reference_resize, Image.BICUBIC)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1)[None]
        vae = pipe.vae
        # SDXL's VAE overflows in fp16 (config force_upcast): encode in fp32, as its img2img pipeline does
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        x = x.to(pipe.device, dtype)
        if upcast:
            vae.to(torch.float32)
        try:
            latent = vae.encode(x).latent_dist.sample(generator=generator)[0] * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(torch.float16)
        return latent.to(pipe.unet.dtype)
