"""What a run watches while it trains: the validation loss, DVAR early stopping, quality scores, the best vectors.

    validation_rows   the fixed validation batch's (view, caption) rows, drawn from the seed
    ValidationLoss    the training loss on that batch with fixed noise and timesteps: a pure function of
                      (seed, current vectors), one compiled call, on every backend
    dvar_ratio        DVAR's criterion (Voronov et al., "Is This Loss Informative?", NeurIPS 2023):
                      var(last `window` validation losses) / var(all of them); `should_stop` applies it
    training_scores   CLIP-I, CLIP-T and (toy world) attribute and edit scores of rendered images
    BestEmbedding     the vectors with the best value of one monitored quantity so far

Nothing here draws from the training RNG's (seed, step) streams: the validation batch uses its own seed
(`validation_seed`), so a run with validation learns the same vectors as one without.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from finetune.backends import compiled_call
from finetune.data.columns import CAPTION, VARIANT

# The validation batch's noise, timesteps and posterior samples: the trainer's draws at a fixed step of a
# seed that training never uses (the run's seed mixed with this constant).
VALIDATION_SALT = 0x56A1_1DA7
VALIDATION_STEP = 0
# Monitored quantities a lower value of which is better; every other one (scores) is better higher.
LOWER_IS_BETTER = ("validation_loss",)


def validation_seed(seed: int) -> int:
    """The seed of the validation batch's draws: distinct from `seed`, a pure function of it."""
    return (int(seed) ^ VALIDATION_SALT) & 0x7FFF_FFFF


def validation_rows(seed: int, num_variants: int, num_captions: int, size: int) -> np.ndarray:
    """int32 [size, 2]: the (VARIANT, CAPTION) rows of the validation batch. Every view once (in an order
    drawn from the seed) before any repeats; captions drawn from the seed."""
    rng = np.random.default_rng([int(seed), VALIDATION_SALT])
    views = np.concatenate([rng.permutation(num_variants) for _ in range(math.ceil(size / num_variants))])[:size]
    rows = np.zeros((size, 2), "int32")
    rows[:, VARIANT] = views
    rows[:, CAPTION] = rng.integers(0, num_captions, size)
    return rows


class NoiseLossModel(keras.Model):
    """The trainer's noise loss as a model of (noisy, timesteps, noise, tokens), for `compiled_call`.
    float32 itself, so that Keras does not cast the noise to a mixed precision's compute dtype (the
    text encoder and UNet inside keep theirs, as in the training step)."""

    def __init__(self, tuner):
        super().__init__(name="validation_loss", dtype="float32")
        self.text_encoder, self.unet = tuner.text_encoder, tuner.unet
        self._loss = tuner.noise_loss
        self.built = True

    def call(self, noisy, timesteps, noise, tokens):
        return self._loss(noisy, timesteps, noise, tokens)


class ValidationLoss:
    """`loss()`: the noise loss of the fixed validation batch with the learned vectors as they are now.

    The batch's inputs (noisy latents, timesteps, noise, tokens) are drawn once, here; each call is
    one compiled forward pass (no gradient) and leaves every random stream of training alone."""

    def __init__(self, tuner, seed: int, num_variants: int, num_captions: int, batch_size: int):
        self.tuner = tuner
        self.rows = validation_rows(seed, num_variants, num_captions, batch_size)
        inputs = tuner.sample_inputs(self.rows, VALIDATION_STEP, seed=validation_seed(seed))
        self.inputs = tuple(keras.ops.convert_to_numpy(x) for x in inputs)
        self._call = compiled_call(NoiseLossModel(tuner))

    def __call__(self) -> float:
        self.tuner.sync_variables()  # a JAX fit keeps the newest vectors in its own state
        return float(keras.ops.convert_to_numpy(self._call(*self.inputs)))


def dvar_ratio(losses, window: int) -> float | None:
    """DVAR's statistic: the variance of the last `window` losses over the variance of all of them
    (None while there are fewer than `window`). Near 1 while the loss still falls, small on a plateau."""
    losses = np.asarray(losses, np.float64)
    if len(losses) < window:
        return None
    total = float(np.var(losses))
    return float(np.var(losses[-window:]) / total) if total > 0 else 0.0


def should_stop(losses, window: int, threshold: float, patience: int = 1) -> bool:
    """True when `dvar_ratio` was below `threshold` at each of the last `patience` evaluations
    (patience 1: DVAR's rule, stop at the first)."""
    if len(losses) < window + patience - 1:
        return False
    ratios = [dvar_ratio(losses[: len(losses) - k], window) for k in range(patience)]
    return all(r is not None and r < threshold for r in ratios)


def training_scores(images: np.ndarray, prompts: list[str], placeholder: str, *, judge=None,
                    reference: np.ndarray | None = None, target: dict | None = None) -> dict[str, float]:
    """Scores of rendered images (uint8 [N, H, W, 3]; `prompts[i]` is image i's prompt):

    clip_i / clip_t (with a judge) over every image; with toy-world `target` attributes, attribute_score
    over the images of prompts that ask for no attribute ("a photo of {}") and edit_score: the share of
    images of the other prompts ("{} on a green background") in which every asked attribute is as asked."""
    from finetune.evaluation.metrics import attribute_score, remove_placeholder
    from finetune.evaluation.scores import measure_images, requested_attributes, score_images

    out: dict[str, float] = {}
    if judge is not None:
        scored = score_images(images, prompts, placeholder, judge=judge, reference=reference)
        out.update({k: float(scored[k]) for k in ("clip_i", "clip_t") if k in scored})
    if target:
        measured = measure_images(images)
        asked = [requested_attributes(remove_placeholder(p, placeholder)) for p in prompts]
        plain = [m for m, a in zip(measured, asked) if not a]
        edits = [all(m.get(k) == v for k, v in a.items()) for m, a in zip(measured, asked) if a]
        if plain:
            out["attribute_score"] = float(attribute_score(plain, target))
        if edits:
            out["edit_score"] = float(np.mean(edits))
    return out


class BestEmbedding:
    """The best value of `by` seen so far, its step and vectors; `offer` calls `save(step, vectors)`
    when a new value beats it (lower for validation_loss, higher for scores; a tie keeps the earlier)."""

    def __init__(self, by: str, save):
        self.by, self.save = by, save
        self.value: float | None = None
        self.step: int | None = None
        self.vectors: np.ndarray | None = None

    def offer(self, step: int, values: dict, vectors) -> bool:
        value = values.get(self.by)
        if value is None or not math.isfinite(value):
            return False
        if self.value is not None and not (value < self.value if self.by in LOWER_IS_BETTER else value > self.value):
            return False
        self.value, self.step, self.vectors = float(value), int(step), np.array(vectors(), np.float32)
        self.save(self.step, self.vectors)
        return True

    def as_metrics(self) -> dict | None:
        return None if self.step is None else {"by": self.by, "step": self.step, "value": self.value}

    def state(self) -> dict | None:
        """For a checkpoint's meta.json (the vectors as lists: float32 survives JSON exactly)."""
        out = self.as_metrics()
        return None if out is None else {**out, "vectors": self.vectors.tolist()}

    def restore(self, saved: dict | None) -> None:
        try:
            if saved["by"] == self.by:
                self.value, self.step = float(saved["value"]), int(saved["step"])
                self.vectors = np.asarray(saved["vectors"], np.float32)
        except (TypeError, KeyError, ValueError):
            pass
