"""The prompt styles the engine writes, as plain string functions.

They have no dependencies, so the trainers (which teach the embedded model and its CLIP these
styles) import them without the job spec's pydantic models.
"""

from __future__ import annotations

__all__ = ["objects_phrase", "generic_prompt", "class_append_prompt"]


def objects_phrase(names: list[str]) -> str:
    parts = [f"{'an' if n[0].lower() in 'aeiou' else 'a'} {n}" for n in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def generic_prompt(domain: str, names: list[str]) -> str:
    """DiffusionEngine's prompt for images without captions."""
    return f"A {domain}, with {', '.join(names)} in the {domain}."


def class_append_prompt(caption: str, names: list[str]) -> str:
    """Dataset Diffusion's class-prompt appending: 'caption; cls-a cls-b'."""
    return f"{caption.strip().rstrip('.')}; {' '.join(names)}"
