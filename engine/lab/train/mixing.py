"""Mixing synthetic and real training data (Diffusion Synthesis, Eq. 3): each sample is drawn
from the synthetic set with probability alpha, else from the real one, uniformly within the set.

Indices address the concatenation ``[synthetic..., real...]`` (as ``torch.utils.data.ConcatDataset``
orders them), so the sampler serves a ``DataLoader`` (``sampler=``) or a step-keyed training loop
(``draw``). Every draw depends on (seed, key) alone, so a resumed run draws what it would have.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AlphaSampler"]


class AlphaSampler:
    """Indices into ``[synthetic..., real...]``: synthetic with probability ``alpha``.

    ``synthetic``/``real``: the sizes of the two sets (int >= 0); ``alpha`` in [0, 1];
    ``num_samples``: how many indices one pass (``iter``) yields (default: both sets' total).
    """

    def __init__(self, synthetic: int, real: int, alpha: float, seed: int = 0, num_samples: int | None = None):
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha: expected a probability in [0, 1], got {alpha!r}")
        if (alpha > 0 and synthetic < 1) or (alpha < 1 and real < 1):
            raise ValueError(f"alpha={alpha} draws from a set that is empty (synthetic {synthetic}, real {real})")
        self.synthetic, self.real, self.alpha, self.seed = synthetic, real, alpha, seed
        self.num_samples = synthetic + real if num_samples is None else num_samples
        self.epoch = 0

    def draw(self, key: int, count: int) -> np.ndarray:
        """``count`` indices (int64, shape (count,)) for ``key`` (e.g. the training step)."""
        rng = np.random.default_rng([self.seed, key])
        pick_synthetic = rng.random(count) < self.alpha
        synthetic = rng.integers(0, max(self.synthetic, 1), count)
        real = self.synthetic + rng.integers(0, max(self.real, 1), count)
        return np.where(pick_synthetic, synthetic, real)

    def set_epoch(self, epoch: int) -> None:
        """A new pass draws new indices (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __iter__(self):
        return iter(self.draw(self.epoch, self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples
