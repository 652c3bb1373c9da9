"""The diffusion backend's speed options: each is applied, and the combinations that would
silently break a head are refused at spec time."""

import numpy as np
import pytest
import torch

from engine.errors import SpecError
from engine.records import ImageRequest
from engine.spec import parse_spec


def backend_for(model, **params):
    from engine.backends.diffusion import DiffusionBackend, DiffusionParams

    return DiffusionBackend(params=DiffusionParams(model=model, **{"steps": 2, **params}), classes=[])


def spec_with(spec_data, model, head, **params):
    spec_data["generator"] = {"name": "diffusion", "params": {"model": model, **params}}
    spec_data["label_head"] = {"name": head}
    return spec_data


def test_refusals_name_the_field_and_the_fix(spec_data, tiny_model):
    from engine.models.speed import xformers_available

    if not xformers_available():
        with pytest.raises(SpecError, match=r"generator.params.attention: expected 'sdpa' or 'auto' \(xformers is "
                                            r"not installed here\), got 'xformers'; install the gpu extra"):
            parse_spec(spec_with(spec_data, tiny_model, "none", attention="xformers"))
    for head, needs in (("attention", "attention_capture"), ("bca", "attention_capture")):
        with pytest.raises(SpecError, match=f"generator.params.compile: expected 'off' with label head '{head}' "
                                            f"\\(it needs {needs}"):
            parse_spec(spec_with(spec_data, tiny_model, head, compile="default"))
        with pytest.raises(SpecError, match=f"generator.params.step_saver: expected 'none' with label head '{head}'"):
            parse_spec(spec_with(spec_data, tiny_model, head, step_saver="pab"))
    with pytest.raises(SpecError, match="generator.params.compile: expected 'off' with label head 'adapter' "
                                        r"\(it needs unet_features"):
        parse_spec(spec_with(spec_data, "embedded:shapes", "adapter", compile="max-autotune"))
    with pytest.raises(SpecError, match="steps_per_scheduler keys among"):
        parse_spec(spec_with(spec_data, tiny_model, "none", steps_per_scheduler={"plms": 10}))
    # the options themselves, with a head that only reads images
    spec = parse_spec(spec_with(spec_data, tiny_model, "none", compile="default", step_saver="pab",
                                channels_last=True, vae_tiling=True, vae_slicing=True, attention="sdpa"))
    assert spec.generator.config.compile == "default"
    # pab with a trained box head: its features come from UNet calls outside the skip window (t = 1, last step)
    parse_spec(spec_with(spec_data, "embedded:shapes", "adapter", step_saver="pab"))


def test_memory_layout_vae_and_attention_options_are_applied(tiny_model):
    from diffusers.models.attention_processor import AttnProcessor2_0

    backend = backend_for(tiny_model, channels_last=True, vae_tiling=True, vae_slicing=True, attention="sdpa")
    conv = backend.pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert backend.pipe.vae.use_tiling and backend.pipe.vae.use_slicing
    assert all(isinstance(p, AttnProcessor2_0) for p in backend.pipe.unet.attn_processors.values())
    plain = backend_for(tiny_model)
    reqs = [ImageRequest(i, seed=40 + i, prompt="a circle") for i in range(2)]
    # the same images up to float rounding (NHWC kernels sum in another order)
    for a, b in zip(backend.generate(reqs), plain.generate(reqs)):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2


def test_steps_per_scheduler_sets_the_unet_calls(tiny_model):
    backend = backend_for(tiny_model, scheduler="unipc", steps=9, steps_per_scheduler={"unipc": 3, "ddim": 7})
    calls = []
    backend.pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    out = backend.generate([ImageRequest(0, 1, "a square")])
    assert out[0].reject is None and len(calls) == 3
    assert type(backend.pipe.scheduler).__name__ == "UniPCMultistepScheduler"


def test_pab_skips_attention_inside_its_window_and_resets_per_batch(tiny_model):
    from diffusers.models.attention_processor import Attention

    steps = 6
    saver = backend_for(tiny_model, steps=steps, scheduler="ddim", step_saver="pab", step_saver_timesteps=(-1, 1000))
    plain = backend_for(tiny_model, steps=steps, scheduler="ddim")

    def count(backend):
        calls = []
        for module in backend.pipe.unet.modules():
            if isinstance(module, Attention):
                module.processor = _Counting(module.processor, calls)
        return calls

    saved, full = count(saver), count(plain)
    reqs = [ImageRequest(i, seed=7 + i, prompt="a ring") for i in range(2)]
    a = saver.generate(reqs)
    layers = sum(isinstance(m, Attention) for m in plain.pipe.unet.modules())
    b = plain.generate(reqs)
    assert len(full) == steps * layers
    assert len(saved) == (steps // 2) * layers  # every other UNet call computes attention (skip 2)
    assert all(g.reject is None for g in a) and any(not np.array_equal(x.image, y.image) for x, y in zip(a, b))
    saved.clear()
    one = saver.generate(reqs[:1])  # another batch size: the cache was reset, nothing stale is reused
    assert one[0].reject is None and len(saved) == (steps // 2) * layers


class _Counting:
    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(1)
        return self.inner(*args, **kwargs)


def test_compile_warms_up_at_load_and_generates(tiny_model):
    """torch.compile on CPU (inductor): the warm-up call compiles before any unit, and the images
    are the eager ones up to float rounding."""
    import time

    start = time.perf_counter()
    backend = backend_for(tiny_model, compile="default", batch_size=2)
    loaded = time.perf_counter() - start
    assert type(backend.pipe.unet).__name__ == "OptimizedModule"
    reqs = [ImageRequest(i, seed=3 + i, prompt="a star") for i in range(2)]
    start = time.perf_counter()
    out = backend.generate(reqs)
    first = time.perf_counter() - start
    assert first < loaded, "the unit's call recompiled: the warm-up did not cover the batch's shapes"
    for a, b in zip(out, backend_for(tiny_model).generate(reqs)):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2
