"""The DDPM noise schedule shared by training (adding noise) and sampling (removing it).

Stable Diffusion v1 was trained with the "scaled_linear" schedule: betas linear in
sqrt-space from 0.00085 to 0.012 over 1000 steps (CompVis v1-inference.yaml:
linear_start / linear_end / timesteps; diffusers calls it "scaled_linear").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

SD_V1_BETA_START = 0.00085
SD_V1_BETA_END = 0.012
SD_V1_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = SD_V1_TRAIN_TIMESTEPS
    beta_start: float = SD_V1_BETA_START
    beta_end: float = SD_V1_BETA_END
    beta_schedule: str = "scaled_linear"

    @cached_property
    def betas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; use 'scaled_linear' or 'linear'")

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative product of (1 - beta), float64, shape [num_train_timesteps]."""
        return np.cumprod(1.0 - self.betas)
