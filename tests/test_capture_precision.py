"""Attention capture in fp16: the query-key product is upcast as diffusers does, and maps that
are NaN or inf are an error, never a silent all-background mask (paper-fidelity review, bug 1)."""

import pytest
import torch

from engine.heads.attention import AttentionStore, CaptureConfig
from engine.heads.attention.capture import _CaptureProcessor

RES, CLASSES, KEYS = 4, 2, 6


def fp16_layer():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16, upcast_attention=True).half()


def capture(attn, hidden, class_embeds, weights):
    store = AttentionStore(CaptureConfig(cross_resolutions=(RES,), self_resolution=None))
    store.begin(class_embeds, weights, torch.zeros(1, 1, KEYS), start_steps=[0], steps=1)
    store._on_step(None, None)
    store.record(_CaptureProcessor(store, None, "cross", RES), attn, hidden)
    return store.end()[0]["cross"][RES]


def test_fp16_product_that_overflows_unscaled_matches_diffusers():
    attn = fp16_layer()
    hidden = (torch.randn(1, RES * RES, 32) * 300).half()
    class_embeds = (torch.randn(1, KEYS, 16) * 300).half()
    query = attn.head_to_batch_dim(attn.to_q(hidden))
    key = attn.head_to_batch_dim(attn.to_k(class_embeds))
    assert not torch.isfinite(query @ key.transpose(-1, -2)).all()  # the unscaled fp16 product overflows
    weights = torch.zeros(1, KEYS, CLASSES)
    weights[0, 1, 0] = weights[0, 2, 1] = 1.0
    expected = attn.get_attention_scores(query, key).float().mean(0) @ weights[0]  # diffusers' own, upcast
    got = capture(attn, hidden, class_embeds, weights)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_nan_maps_are_an_error_not_background():
    attn = fp16_layer()
    hidden = torch.full((1, RES * RES, 32), float("nan")).half()
    with pytest.raises(FloatingPointError, match="NaN or inf in the cross-attention at 4x4 maps"):
        capture(attn, hidden, torch.randn(1, KEYS, 16).half(), torch.ones(1, KEYS, CLASSES))


def tiny_upcast_unet(dtype):
    """A one-head-of-64 UNet whose config sets upcast_attention (as SD 2.1 at 768 px does)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(64, 64), norm_num_groups=8, cross_attention_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=1,
                                upcast_attention=True)
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    with torch.no_grad():  # activations large enough that the unscaled fp16 q·kᵀ overflows (~300 · ~300 · 64)
        attn.to_q.weight.mul_(500)
        attn.to_k.weight.mul_(500)
    return unet.to(dtype)


def unet_capture(dtype):
    unet = tiny_upcast_unet(dtype)
    store = AttentionStore(CaptureConfig(cross_resolutions=(8,), self_resolution=None, blocks=("down",)))
    store.install(unet)
    torch.manual_seed(1)
    class_embeds = torch.randn(1, KEYS, 16).to(dtype)
    weights = torch.zeros(1, KEYS, CLASSES)
    weights[0, 1, 0] = weights[0, 2, 1] = 1.0
    store.begin(class_embeds, weights, torch.zeros(1, 1, KEYS), start_steps=[0], steps=1)
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    seen = []
    hook = attn.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0] if args else
                                                                                   kwargs["hidden_states"]),
                                          with_kwargs=True)
    with torch.no_grad():
        unet(torch.randn(2, 4, 8, 8).to(dtype), 500, encoder_hidden_states=torch.randn(2, 7, 16).to(dtype))
    hook.remove()
    states = seen[0][-1:]
    query = attn.head_to_batch_dim(attn.to_q(states))
    key = attn.head_to_batch_dim(attn.to_k(class_embeds))
    return store.end()[0]["cross"][8], query, key


def test_tiny_unet_with_upcast_attention_in_fp16_captures_finite_maps():
    maps, query, key = unet_capture(torch.float16)
    assert query.dtype == torch.float16 and query.shape[-1] == 64
    assert not torch.isfinite(query @ key.transpose(-1, -2)).all()  # the unscaled fp16 product overflows here
    assert torch.isfinite(maps).all() and (maps.sum(0) > 0).all()
    reference, _, _ = unet_capture(torch.float32)
    # the same layer's maps in fp32: fp16 rounding of the ~300-sized activations moves the
    # sharp softmax a little, so compare loosely
    torch.testing.assert_close(maps, reference, atol=0.05, rtol=0)
