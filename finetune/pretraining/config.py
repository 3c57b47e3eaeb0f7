"""Typed schema of `finetune/pretraining/configs/*.yaml` (scripts/pretrain_tiny.py).

Each stage section holds exactly the keyword arguments of its `train_*` function, so a
key the function does not know fails when Hydra composes the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class PoolConfig:
    size: int = 24000  # toy-world images generated once (finetune.toyworld.generate) and shared by the stages
    seed: int = 1234


@dataclass
class VAEStageConfig:
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 0.5
    kl_weight: float = 1e-4
    grad_clip: Optional[float] = 1.0
    initial_logvar: float = -6.0
    stats_samples: int = 2048
    checkpoint_every: int = 250
    keep_checkpoints: int = 2


@dataclass
class ClipStageConfig:
    steps: int = 800
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 1.0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2


@dataclass
class UNetStageConfig:
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 8e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    min_snr_gamma: Optional[float] = 5.0  # Min-SNR loss weighting; null: plain MSE
    text_learning_rate: float = 0.0  # 0: the CLIP stage's text encoder stays frozen
    checkpoint_every: int = 250
    keep_checkpoints: int = 2


@dataclass
class PretrainEvalConfig:
    enabled: bool = True
    samples_per_prompt: int = 8
    guidance_scale: float = 5.0
    num_steps: int = 25
    seed: int = 0
    ceiling_images: int = 512


@dataclass
class PretrainConfig:
    preset: str = "tiny"
    out_dir: str = "outputs/pretrain_tiny"  # checkpoints and full-precision stage weights; re-run to resume
    export_dir: Optional[str] = None  # null: the package's assets folder, finetune/assets/<preset>
    export_dtype: str = "float16"  # float16 | float32
    seed: int = 0  # data order, captions, noise and timesteps of every stage
    init_seed: int = 0  # initial weights
    progress: bool = True
    pool: PoolConfig = field(default_factory=PoolConfig)
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)
    clip: ClipStageConfig = field(default_factory=ClipStageConfig)
    unet: UNetStageConfig = field(default_factory=UNetStageConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    verbose: bool = False


def register_pretrain_schema() -> None:
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)
