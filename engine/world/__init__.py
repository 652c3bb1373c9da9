"""Shapes world: deterministic procedural scenes of coloured shapes with exact labels."""

from engine.world.export import export_coco
from engine.world.render import CLASSES, Instance, Scene, WorldConfig, render_scene

__all__ = ["CLASSES", "WorldConfig", "Instance", "Scene", "render_scene", "export_coco"]
