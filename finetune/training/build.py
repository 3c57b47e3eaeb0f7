"""The trainer of a run, built from a config and the cached latents: text encoder (learned vectors at
their start values) + UNet + `StableDiffusionFineTuner` + AdamW. No data stage here: the speed
benchmark builds the same trainer on a machine without TensorFlow (KERAS_BACKEND=jax)."""

from __future__ import annotations

import keras
import numpy as np

from finetune.assembly import ModelSource, load_component, load_text_encoder
from finetune.backends import name as backend_name
from finetune.diffusion.schedule import NoiseSchedule
from finetune.training.distribute import adapt_optimizer, check_trainer, make_strategy
from finetune.training.editability import FixedNorm, project, target_norms
from finetune.training.fine_tuner import StableDiffusionFineTuner
from finetune.training.schedules import UpdateSchedule, WarmupDecay


def make_schedule(trainer_cfg) -> UpdateSchedule:
    """The learning rate per optimizer update, with early stopping's cooldown when the run stops early."""
    t = trainer_cfg
    lr = t.learning_rate * (t.batch_size * t.gradient_accumulation_steps if t.scale_lr else 1)  # global batch
    return UpdateSchedule(WarmupDecay(lr, t.max_steps, t.warmup_steps, t.lr_schedule), t.gradient_accumulation_steps,
                          t.early_stopping_cooldown if t.early_stopping else 0)


def make_optimizer(trainer_cfg, schedule: UpdateSchedule | None = None) -> keras.optimizers.Optimizer:
    t = trainer_cfg
    return keras.optimizers.AdamW(
        learning_rate=schedule or make_schedule(t),
        weight_decay=t.weight_decay,
        beta_1=t.adam_beta1,
        beta_2=t.adam_beta2,
        epsilon=t.adam_epsilon,
        global_clipnorm=t.max_grad_norm,
        gradient_accumulation_steps=t.gradient_accumulation_steps if t.gradient_accumulation_steps > 1 else None,
    )


def build_tuner(cfg, source: ModelSource, moments: np.ndarray, caption_tokens: np.ndarray, init_ids: list[int],
                strategy=None):
    """Text encoder (learned vectors at their start values) + UNet + the compiled trainer, built in
    the scope of `strategy` (default: `trainer.strategy`, made now). Returns the trainer and the start vectors."""
    strategy = strategy or make_strategy(cfg.trainer.strategy)
    check_trainer(cfg.trainer, strategy)
    with strategy.scope():
        text_encoder = load_text_encoder(source, cfg.token.num_vectors)
        embedding = text_encoder.token_embedding
        initial_vectors = embedding.initial_vectors(init_ids, cfg.seed)
        norms = target_norms(cfg.token.norm, initial_vectors, keras.ops.convert_to_numpy(embedding.table))
        if norms is not None:  # on the sphere from the start, and after every update (the optimizer applies it)
            embedding.learned_vectors.constraint = FixedNorm(norms)
            initial_vectors = project(initial_vectors, norms)
        embedding.set_learned_vectors(initial_vectors)
        unet = load_component(source, "unet")
        unet.gradient_checkpointing = cfg.trainer.gradient_checkpointing
        tuner = StableDiffusionFineTuner(
            text_encoder, unet, moments, caption_tokens, NoiseSchedule(), source.preset.vae.scaling_factor, seed=cfg.seed,
            initial_vectors=initial_vectors, l2_to_initializer=cfg.trainer.l2_to_initializer,
        )
        tuner.schedule = make_schedule(cfg.trainer)  # the run starts early stopping's cooldown through it
        optimizer = make_optimizer(cfg.trainer, tuner.schedule)
        adapt_optimizer(optimizer, strategy)
        # model.jit_compile is TensorFlow's XLA switch; JAX always compiles the step (eager JAX is op by op).
        tuner.compile(optimizer=optimizer, jit_compile=source.jit_compile or backend_name() == "jax")
        tuner.optimizer.build([tuner.learned_vectors])
        tuner.schedule.add_cooldown_variable(tuner.optimizer)
    return tuner, initial_vectors
