"""Resumable training checkpoints in safetensors + JSON (no pickles, per the project's rules).

A checkpoint holds module weights, EMA weights and optimizer state as tensors, and the
step and optimizer hyper-parameters as JSON. (Training draws its randomness from
(seed, step), so there is no RNG state to keep.) It is written to a temp folder
and renamed into place, so a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil

__all__ = ["save_checkpoint", "load_checkpoint", "drop_origin_paths"]

SHARD_BYTES = 15 * 2**20  # each file under the 16 MiB the device tool returns


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors = {f"optim.{index}.{key}": value for index, slots in state["state"].items()
               for key, value in slots.items()}
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(folder: str, modules: dict, optimizer, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, module in modules.items()
               for k, v in module.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update({k: v.cpu().contiguous() for k, v in optim_tensors.items()})
    meta = dict(meta, optimizer=optim_meta)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for index, shard in enumerate(_shards(tensors)):
        save_file(shard, os.path.join(tmp, f"state-{index:05d}.safetensors"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    old = folder + ".old"
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _shards(tensors: dict, limit: int = SHARD_BYTES):
    """Split into files under ``limit`` bytes, so checkpoints can be committed to git."""
    shard, size = {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shard and size + nbytes > limit:
            yield shard
            shard, size = {}, 0
        shard[key], size = value, size + nbytes
    if shard:
        yield shard


def load_checkpoint(folder: str, modules: dict, optimizer) -> dict | None:
    """Restore modules and optimizer from ``folder``; returns its meta, or None if there is none."""
    from safetensors.torch import load_file

    if not os.path.exists(os.path.join(folder, "meta.json")):
        return None
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            slots.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer"]["param_groups"]})
    return meta


def drop_origin_paths(*config_files: str) -> None:
    """Remove ``_name_or_path`` from exported diffusers ``config.json`` files: a model loaded from a
    path (a warm start) keeps that path, which names the training machine, not the model. The card
    records where a run started."""
    for path in config_files:
        with open(path) as f:
            config = json.load(f)
        if config.pop("_name_or_path", None) is not None:
            with open(path, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
