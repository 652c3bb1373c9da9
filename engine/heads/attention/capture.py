"""Attention capture through diffusers attention processors (Dataset Diffusion, section 3.2).

``AttentionStore.install(unet)`` wraps the processors of the chosen layers only; every
other layer keeps its fused attention (SDPA or xformers), and the wrapped layers still
compute their output with it. A wrapped layer also recomputes, for the conditional half
of the batch only, the probabilities it needs:

- cross-attention: the conditional queries against the keys of a class-only prompt
  ``"c1 c2 ... cM"`` (encoded beside the generation prompt, which stays unchanged), with
  each class's sub-tokens averaged;
- self-attention at one resolution.

Both are averaged over heads and added into fp32 running sums allocated per batch, so a
map never outlives its layer call. A forward pre-hook on the UNet counts denoising steps:
a step counts for an image when it lies in the configured share of the schedule and at or
after the image's own start step (img2img references enter the batch late).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...records import plural_forms

__all__ = ["ALL_BLOCKS", "CaptureConfig", "AttentionStore", "attention_resolutions", "check_resolutions", "encode_class_prompts"]


ALL_BLOCKS = ("down", "mid", "up")


@dataclass(frozen=True)
class CaptureConfig:
    cross_resolutions: tuple[int, ...]
    self_resolution: int | None
    timesteps: tuple[float, float] = (0.0, 1.0)  # share of the denoising schedule, 0 = the noisiest step
    blocks: tuple[str, ...] = ALL_BLOCKS  # UNet parts whose layers are captured
    cross_keys: str = "generation"  # see encode_class_prompts


def _layer_resolution(name: str, latent_size: int, levels: int) -> int:
    """The latent side a processor runs at, from its module path (``down_blocks.1...``)."""
    block, _, rest = name.partition(".")
    if block == "mid_block":
        return latent_size >> (levels - 1)
    index = int(rest.split(".", 1)[0])
    return latent_size >> (index if block == "down_blocks" else levels - 1 - index)


def attention_resolutions(unet_config: dict, parts: tuple[str, ...] = ALL_BLOCKS) -> list[int]:
    """Latent sides at which the UNet has (self and cross) attention in ``parts`` (of "down", "mid",
    "up"), largest first."""
    latent, levels = unet_config["sample_size"], len(unet_config["block_out_channels"])
    blocks = [f"{kind}_blocks.{i}" for kind in ("down", "up") if kind in parts
              for i, block_type in enumerate(unet_config[f"{kind}_block_types"]) if "CrossAttn" in block_type]
    if "mid" in parts and "CrossAttn" in (unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        blocks.append("mid_block")
    return sorted({_layer_resolution(b, latent, levels) for b in blocks}, reverse=True)


def check_resolutions(unet_config: dict, config: CaptureConfig) -> str | None:
    """One message if the configured resolutions are not among the model's attention layers."""
    available = attention_resolutions(unet_config, config.blocks)
    wanted = set(config.cross_resolutions) | ({config.self_resolution} - {None})
    missing = sorted(wanted - set(available))
    if not missing:
        return None
    where = "" if set(config.blocks) == set(ALL_BLOCKS) else f" in its {'/'.join(config.blocks)} blocks"
    return (f"label_head.params: expected attention resolutions among {available} for this model{where}, got "
            f"{missing}; set cross_resolutions and self_resolution to some of {available}"
            + (" or add blocks" if where else ""))


def encode_class_prompts(pipe, class_lists: list[list[str]], keys: str = "generation",
                         prompts: list[str] | None = None, class_words: dict[str, list[str]] | None = None):
    """The keys of the class cross-attention, through the pipeline's own text encoder(s).

    Returns token embeddings (B, L, D), token weights (B, L, Mmax) whose column m averages the
    tokens of class m (its sub-tokens, and each place it is named), and a key bias (B, 1, L)
    that limits the softmax to those tokens and the start token (the place attention goes when
    no class is there: a softmax over one class token alone would be constant).

    ``keys``:
    - ``"generation"`` (default): the prompt each image is generated from (``prompts``), as
      Dataset Diffusion reads its class tokens in the prompt that made the image. A class is
      found by any of its ``class_words`` (default: its name) or their plurals; a class the prompt
      does not name is appended after it, as the paper appends class names. CLIP's text encoders
      are causal, so what the backend appends (a quality suffix) does not change these tokens.
      An image whose classes do not all fit in the encoder's length falls back to the class-only
      prompt.
    - ``"start_and_classes"``: a class-only prompt ``[BOS c1 ... cM EOS]`` encoded beside the
      generation prompt.
    - ``"prompt"``: the same class-only prompt, softmax over all of its tokens (Dataset
      Diffusion's code).

    SDXL: the prompt goes through both tokenizers and encoders and the keys come from their
    concatenated penultimate hidden states (``models.conditioning.encode_token_ids``), D = 2048,
    as SDXL's cross-attention sees a prompt. Both tokenizers must split each class name into the
    same number of pieces (SDXL's two CLIP tokenizers share one vocabulary); ValueError otherwise.
    """
    import torch

    from ...models.conditioning import encode_token_ids, text_encoders

    if keys == "generation" and (prompts is None or len(prompts) != len(class_lists)):
        raise ValueError(f"cross_keys 'generation': expected one prompt per image ({len(class_lists)}), got "
                         f"{None if prompts is None else len(prompts)}")
    tokenizers = [tokenizer for tokenizer, _ in text_encoders(pipe)]
    length = min(t.model_max_length for t in tokenizers)
    widest = max((len(c) for c in class_lists), default=0)
    ids = [torch.full((len(class_lists), length), t.pad_token_id, dtype=torch.long) for t in tokenizers]
    weights = torch.zeros(len(class_lists), length, max(widest, 1))
    for b, names in enumerate(class_lists):
        placed = None
        if keys == "generation":
            try:
                placed = _generation_row(tokenizers, prompts[b], names, class_words or {}, length)
            except ValueError:  # a word form the tokenizers split differently: the class-only prompt says which
                placed = None
        rows, columns = placed or _class_only_row(tokenizers, names, length)
        for k, row in enumerate(rows):
            ids[k][b, :len(row)] = torch.tensor(row)
        weights[b, :columns.shape[0], :columns.shape[1]] = columns
    device = pipe.unet.device
    with torch.no_grad():
        embeds = encode_token_ids(pipe, ids)
    bias = torch.zeros(len(class_lists), 1, length)
    if keys != "prompt":
        keep = weights.sum(-1) > 0
        keep[:, 0] = True
        bias[~keep[:, None, :]] = float("-inf")
    return embeds.to(pipe.unet.dtype), weights.to(device), bias.to(device)


def _pieces(tokenizers, text: str) -> list[list[int]]:
    """``text``'s token ids under each tokenizer (no special tokens); ValueError where they differ in count."""
    pieces = [t(text.replace("_", " "), add_special_tokens=False).input_ids for t in tokenizers]
    if len({len(p) for p in pieces}) > 1:
        raise ValueError(f"the text encoders' tokenizers split {text!r} differently ({pieces}): class "
                         f"cross-attention cannot line their keys up")
    return pieces


def _class_only_row(tokenizers, names: list[str], length: int):
    """``[BOS c1 ... cM EOS]`` per tokenizer and its (tokens, M) weight columns."""
    import torch

    rows = [[t.bos_token_id] for t in tokenizers]
    columns = torch.zeros(length, max(len(names), 1))
    for m, name in enumerate(names):
        pieces = _pieces(tokenizers, name)
        if len(rows[0]) + len(pieces[0]) >= length:  # no room left (prompt_limits refuses such items before a job)
            break
        columns[len(rows[0]):len(rows[0]) + len(pieces[0]), m] = 1.0 / len(pieces[0])
        for row, piece in zip(rows, pieces):
            row += piece
    for t, row in zip(tokenizers, rows):
        row.append(t.eos_token_id)
    return rows, columns


def _outermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, size) token spans without those inside another ("circle" inside "circle s")."""
    kept: list[tuple[int, int]] = []
    for start, size in sorted(set(spans), key=lambda span: (span[0], -span[1])):
        if not kept or start >= kept[-1][0] + kept[-1][1]:
            kept.append((start, size))
    return kept


def _generation_row(tokenizers, prompt: str, names: list[str], class_words: dict[str, list[str]], length: int):
    """The generation prompt's tokens (``[BOS prompt... appended classes EOS]``) per tokenizer and
    the weight columns of each class's mentions, or None when the classes do not all fit."""
    import torch

    rows = [t(prompt, add_special_tokens=False).input_ids for t in tokenizers]
    if len({len(r) for r in rows}) > 1 or len(rows[0]) + 2 > length:
        return None
    rows = [[t.bos_token_id] + r for t, r in zip(tokenizers, rows)]
    columns = torch.zeros(length, max(len(names), 1))
    for m, name in enumerate(names):
        spans = [(start, len(piece[0])) for word in class_words.get(name, [name]) for form in [word, *sorted(plural_forms(word))]
                 for piece in [_pieces(tokenizers, form)]
                 for start in range(1, len(rows[0]) - len(piece[0]) + 1)
                 if all(row[start:start + len(p)] == p for row, p in zip(rows, piece))]
        if not spans:  # not named in the prompt: appended, as Dataset Diffusion appends class names
            pieces = _pieces(tokenizers, name)
            if len(rows[0]) + len(pieces[0]) + 1 > length:
                return None
            spans = [(len(rows[0]), len(pieces[0]))]
            for row, piece in zip(rows, pieces):
                row += piece
        mentions = _outermost(spans)
        for start, size in mentions:
            columns[start:start + size, m] += 1.0 / (size * len(mentions))
    for t, row in zip(tokenizers, rows):
        row.append(t.eos_token_id)
    return rows, columns


class _CaptureProcessor:
    """Runs the layer's own (fused) processor, then lets the store record this layer."""

    def __init__(self, store: "AttentionStore", inner, kind: str, resolution: int):
        self.store, self.inner, self.kind, self.resolution = store, inner, kind, resolution

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self.store.recording:
            self.store.record(self, attn, hidden_states)
        return out


class AttentionStore:
    """Running sums of class cross-attention and self-attention for one batch at a time.

    Use::

        store = AttentionStore(config); store.install(unet)
        store.begin(*encode_class_prompts(pipe, class_lists, config.cross_keys, prompts), start_steps, steps)
        pipe(...)                         # one UNet call per denoising step
        maps = store.end()                # per image: {"cross": {res: (res*res, M)}, "self": (r*r, r*r)}
    """

    def __init__(self, config: CaptureConfig):
        self.config = config
        self.recording = False
        self._batch = 0

    # ---- installation
    def install(self, unet) -> None:
        from ...errors import UserError

        problem = check_resolutions(unet.config, self.config)
        if problem:
            raise UserError(problem)
        latent, levels = unet.config.sample_size, len(unet.config.block_out_channels)
        processors = {}
        for name, processor in unet.attn_processors.items():
            kind = "self" if ".attn1." in name else "cross"
            resolution = _layer_resolution(name, latent, levels)
            chosen = name.split("_", 1)[0] in self.config.blocks and (
                resolution == self.config.self_resolution if kind == "self"
                else resolution in self.config.cross_resolutions)
            processors[name] = _CaptureProcessor(self, processor, kind, resolution) if chosen else processor
        unet.set_attn_processor(processors)
        unet.register_forward_pre_hook(self._on_step)

    # ---- one batch
    def begin(self, class_embeds, token_weights, key_bias, start_steps: list[int], steps: int) -> None:
        import torch

        device = token_weights.device
        self._batch, self._steps, self._step = len(start_steps), steps, 0
        self._starts = torch.tensor(start_steps, device=device)
        self._class_embeds, self._token_weights = class_embeds, token_weights
        self._key_bias = key_bias
        self._class_keys: dict[int, object] = {}
        classes = token_weights.shape[-1]
        self._cross = {r: torch.zeros(self._batch, r * r, classes, device=device)
                       for r in self.config.cross_resolutions}
        r = self.config.self_resolution
        self._self = torch.zeros(self._batch, r * r, r * r, device=device) if r else None
        self._counts = {("cross", r): torch.zeros(self._batch, device=device) for r in self.config.cross_resolutions}
        if r:
            self._counts[("self", r)] = torch.zeros(self._batch, device=device)
        self._weights = None

    def buffers(self) -> list:
        """The running sums of the current batch (for measuring their memory)."""
        return [*self._cross.values(), *([self._self] if self._self is not None else [])]

    def end(self) -> list[dict]:
        """Per image, the captured maps. Raises FloatingPointError if any sum is NaN or inf
        (a NaN map would otherwise threshold to an all-background mask, silently)."""
        self.recording = False
        self._check_finite()
        maps = []
        for b in range(self._batch):
            entry = {"cross": {r: (s[b] / self._counts[("cross", r)][b].clamp(min=1e-8)).float().cpu()
                               for r, s in self._cross.items()}}
            if self._self is not None:
                count = self._counts[("self", self.config.self_resolution)][b].clamp(min=1e-8)
                entry["self"] = (self._self[b] / count).float().cpu()
            maps.append(entry)
        self._batch, self._cross, self._self, self._class_keys = 0, {}, None, {}
        return maps

    def _check_finite(self) -> None:
        import torch

        sums = {f"cross-attention at {r}x{r}": s for r, s in self._cross.items()}
        if self._self is not None:
            sums[f"self-attention at {self.config.self_resolution}x{self.config.self_resolution}"] = self._self
        bad = [name for name, total in sums.items() if not bool(torch.isfinite(total).all())]
        if bad:
            self._batch, self._cross, self._self, self._class_keys = 0, {}, None, {}
            raise FloatingPointError(f"attention capture: NaN or inf in the {', '.join(bad)} maps (the model's "
                                     f"activations overflowed); no masks are made from them")

    def _on_step(self, module, args) -> None:
        if not self._batch:
            return
        lo, hi = self.config.timesteps
        step, self._step = self._step, self._step + 1
        in_range = lo * self._steps <= step < max(hi * self._steps, lo * self._steps + 1)
        self._weights = ((self._starts <= step) & in_range).float()
        self.recording = bool(self._weights.any())

    # ---- one layer call
    def record(self, processor: _CaptureProcessor, attn, hidden_states) -> None:
        import torch

        batch = self._batch
        states = hidden_states[-batch:]  # CFG puts the conditional half last
        if states.ndim == 4:
            states = states.flatten(2).transpose(1, 2)
        with torch.no_grad():
            query = self._heads(attn, attn.to_q(states), attn.norm_q)
            if processor.kind == "self":
                key = self._heads(attn, attn.to_k(states), attn.norm_k)
                total = self._self
            else:
                key = self._class_keys.get(id(attn))
                if key is None:
                    key = self._class_keys[id(attn)] = self._heads(attn, attn.to_k(self._class_embeds), attn.norm_k)
                total = self._cross[processor.resolution]
            probs = 0
            for h in range(attn.heads):  # one head at a time: the transient stays (B, N, L)
                # upcast before the product, as diffusers' get_attention_scores does with
                # upcast_attention: an fp16 q·kᵀ can overflow to inf before any scaling
                scores = (query[:, h].float() @ key[:, h].float().transpose(-1, -2)) * attn.scale
                if processor.kind == "cross":
                    scores = scores + self._key_bias
                probs = probs + torch.softmax(scores, dim=-1)
            probs = probs / attn.heads
            if processor.kind == "cross":
                probs = probs @ self._token_weights
            total.add_(self._weights[:, None, None] * probs)
            self._counts[(processor.kind, processor.resolution)].add_(self._weights)

    @staticmethod
    def _heads(attn, projected, norm):
        batch, length, inner = projected.shape
        split = projected.view(batch, length, attn.heads, inner // attn.heads).transpose(1, 2)
        return norm(split) if norm is not None else split
