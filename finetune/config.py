"""Typed schemas of the Hydra configs.

The schemas are registered in Hydra's ConfigStore and sit first in the defaults lists
of `finetune/configs/train.yaml` and `finetune/configs/evaluate.yaml`, so Hydra checks every key and type
while it composes: an unknown key or a value of the wrong type stops the run before it
starts, with the key named (see `finetune.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The bundled concept (finetune/assets/concepts/): the default data.concept_dir, wherever the package is installed.
DEFAULT_CONCEPT = "${finetune_asset:concepts/red-checkered-heart}"
# The default placeholder: from the concept folder's name (finetune.tokens.tokenizer.concept_placeholder);
# null where the config has no data.concept_dir (finetune.evaluate: the embedding file names it).
DEFAULT_PLACEHOLDER = "${concept_placeholder:${oc.select:data.concept_dir,null}}"

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def compose_config(config_name: str = "train", overrides: list[str] | tuple[str, ...] = ()):
    """The typed config that `python -m finetune.<config_name> <overrides>` would run with (no run folder made)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
        return OmegaConf.to_object(cfg)


def concept_placeholder(concept_dir: str | None) -> str | None:
    """`<folder-name>` of a concept folder (`<my-folder-name>` when the name is a CLIP word); see
    finetune.tokens.tokenizer.concept_placeholder. Configs use it as `${concept_placeholder:...}`."""
    from finetune.tokens.tokenizer import concept_placeholder as placeholder_of  # the vocabulary knows its words

    return placeholder_of(concept_dir)


def finetune_asset(relative: str) -> str:
    """Absolute path of a file shipped in the package's assets folder.

    Configs use it as `${finetune_asset:tiny/unet.safetensors}`, so a config finds the
    bundled weights wherever the package is installed and whatever the working directory.
    """
    return str(ASSETS_DIR / relative)


@dataclass
class ModelWeights:
    """Local paths of the four components' weight files (keras-cv .h5 or project .safetensors).
    None here: each `model=` option names its files (the default, model=tiny, the bundled ones)."""

    text_encoder: Optional[str] = None
    unet: Optional[str] = None
    vae_encoder: Optional[str] = None
    vae_decoder: Optional[str] = None


@dataclass
class JudgeConfig:
    """The CLIP that scores generated images (CLIP-I / CLIP-T): a text encoder of the model's
    preset and a `ClipImageModel` file (finetune/models/clip_image.py). Null: no CLIP metrics."""

    text_encoder: Optional[str] = None
    clip_image: Optional[str] = None


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a preset name, or a path (preset.json, converted folder, checkpoint)
    weights: ModelWeights = field(default_factory=ModelWeights)
    # A diffusers SD v1 folder, a CompVis single file (.safetensors) or a folder written by
    # `python -m finetune.convert`; when set, every component is read (converted) from it
    # instead of model.weights (finetune/configs/model/diffusers.yaml).
    checkpoint: Optional[str] = None
    # A component without a weight file starts from seeded random weights only when this is true.
    allow_random_weights: bool = False
    init_seed: int = 0
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    # Store the frozen weights in the compute dtype of a mixed precision (bfloat16 | float16; null: as
    # `precision` stores them). The learned vectors and the optimizer state stay float32.
    frozen_dtype: Optional[str] = None
    jit_compile: bool = False
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class DataConfig:
    concept_dir: str = DEFAULT_CONCEPT
    templates: str = "object"  # object | style | path to a file with one template per line
    # Words naming what every image shows besides the concept ("on a white background"), put after the
    # placeholder in every caption so the token does not absorb them (editability; docs/quality.md). null: none.
    context: Optional[str] = None
    resolution: int = 64
    crop: str = "center"  # center | random_resized
    flip: bool = True
    crops_per_image: int = 4
    repeats: int = 1
    data_dir: Optional[str] = None  # where the TFDS dataset is prepared; default: <run dir>/tfds


@dataclass
class TokenConfig:
    # The new word to learn; default `<concept-folder-name>` (never a CLIP word, nor is its file stem).
    placeholder: Optional[str] = DEFAULT_PLACEHOLDER
    initializer: Optional[str] = "shape"  # text whose token embeddings start the vectors; null = random
    num_vectors: int = 1
    truncate_long_prompts: bool = False
    # Editability (finetune/training/editability.py): each vector held at a fixed norm: null (free) |
    # vocabulary (the vocabulary's mean norm) | initializer (its start norm) | a number. docs/quality.md measures them.
    norm: Optional[str] = "vocabulary"


@dataclass
class ValidationConfig:
    """The validation loss: the training loss on one fixed batch (views, captions, noise and timesteps
    drawn from `seed` once, the same on resume), evaluated without touching the training draws."""

    every: int = 10  # steps between evaluations (0: never; early stopping needs it)
    batch_size: int = 8  # rows of the fixed batch (the views cycle when there are fewer)


@dataclass
class TrainerConfig:
    max_steps: int = 400  # optimizer updates
    batch_size: int = 4
    learning_rate: float = 5e-3
    scale_lr: bool = False  # lr x batch_size x gradient_accumulation_steps
    lr_schedule: str = "cosine"  # constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # null | auto | path to a checkpoint or run folder
    encode_batch_size: int = 8
    # tf.distribute: default | mirrored | multi_worker_mirrored (needs TF_CONFIG); batch_size is the global batch,
    # split over the replicas (finetune/training/distribute.py).
    strategy: str = "default"
    # Recompute UNet block activations in the backward pass instead of keeping them: less memory,
    # about one more UNet forward per step (docs/benchmarks.md). Same result.
    gradient_checkpointing: bool = False
    # Editability: weight of the penalty mean ||v - v_start||^2 added to the loss (0: none; docs/quality.md).
    l2_to_initializer: float = 0.0
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # Stop when the validation loss stops moving (DVAR, Voronov et al., NeurIPS 2023): the variance of the
    # last `early_stopping_window` validation losses over the variance of all of them falls below
    # `early_stopping_threshold` at `early_stopping_patience` evaluations in a row. The paper evaluates every
    # step with window 282 and threshold 0.39 (docs/quality.md: what suits this project's runs).
    early_stopping: bool = False
    early_stopping_window: int = 10  # validation losses (x trainer.validation.every steps)
    early_stopping_threshold: float = 0.39
    early_stopping_patience: int = 3
    # Once the criterion holds, this many more updates with the learning rate decaying linearly to 0, then
    # stop (a cooldown, as warmup-stable-decay schedules end): the last vectors settle instead of being one
    # step of a walk at a high rate (docs/quality.md: 5 seeds). 0: stop at once.
    early_stopping_cooldown: int = 100


@dataclass
class EvalConfig:
    # {} = the placeholder: the concept as it is, then in new contexts (what textual inversion is for)
    prompts: list[str] = field(default_factory=lambda: ["a photo of {}", "{} on a green background", "a small {}"])
    # A prompt without {} renders without the learned token: refused unless this is false.
    require_placeholder: bool = True
    negative_prompt: str = ""
    images_per_prompt: int = 4
    num_steps: int = 25
    guidance_scale: float = 5.0  # tuned on the bundled concept (docs/quality.md); SD v1 recipes use 7.5
    eta: float = 0.0
    seed: int = 0
    preview_every: int = 50  # render eval.prompts[0] every N steps (0: never)
    enabled: bool = True
    # Concept images that CLIP-I compares with (training: null = data.concept_dir; a concept.json there
    # with toyworld_attributes adds the attribute score).
    reference_dir: Optional[str] = None
    # Quality during training: every `score_every` steps render `score_images` seeds (eval.seed, ...) of each
    # eval prompt and score them (CLIP-I, CLIP-T; toy world: attribute and edit scores). 0: never.
    score_every: int = 0
    score_images: int = 2
    # What learned_embeds-best.safetensors (and W&B's alias `best`) follows: validation_loss (lowest) or a
    # score (highest): clip_i | clip_t | attribute_score | edit_score.
    best_by: str = "validation_loss"


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb | tensorboard (finetune/tracking/)
    project: str = "textual-inversion"
    mode: str = "offline"  # wandb: online | offline | disabled (finetune/configs/logger/wandb.yaml: $WANDB_MODE, else offline)
    log_every: int = 10
    init_timeout: float = 30.0  # wandb: seconds an online start may take before the run falls back to offline


@dataclass
class ExportConfig:
    """Embedding files written at the end of a run (finetune/export/formats.py). `diffusers`
    is run_dir/learned_embeds.safetensors (always written); the others go to run_dir/export/<format>/."""

    formats: list[str] = field(default_factory=lambda: ["diffusers"])  # diffusers | a1111_pt | a1111_safetensors | kohya
    allow_pickle: bool = False  # read .pt/.bin pickles (only with torch.load(weights_only=True))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0
    name: str = "${hydra:runtime.choices.model}"  # the run folder outputs/<name>/<date_time>
    verbose: bool = False


@dataclass
class EvaluateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    embedding: str = MISSING  # path to an embedding file of any format in finetune/export/formats.py
    allow_pickle: bool = False  # read a .pt/.bin embedding (only with torch.load(weights_only=True))
    resolution: int = 64
    name: str = "evaluate"
    verbose: bool = False


def register_schemas() -> None:
    if not OmegaConf.has_resolver("finetune_asset"):
        OmegaConf.register_new_resolver("finetune_asset", finetune_asset)
    if not OmegaConf.has_resolver("concept_placeholder"):
        OmegaConf.register_new_resolver("concept_placeholder", concept_placeholder)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
