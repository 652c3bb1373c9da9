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
