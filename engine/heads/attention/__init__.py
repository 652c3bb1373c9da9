"""Training-free labels from a diffusion model's own attention (Dataset Diffusion, DiffusionEngine BCA)."""

from .capture import ALL_BLOCKS, AttentionStore, CaptureConfig, attention_resolutions, check_resolutions, encode_class_prompts
from .maps import bca_instances, class_maps, components, region_classes, semantic_mask

__all__ = ["ALL_BLOCKS", "AttentionStore", "CaptureConfig", "attention_resolutions", "check_resolutions", "encode_class_prompts",
           "class_maps", "semantic_mask", "components", "region_classes", "bca_instances"]
