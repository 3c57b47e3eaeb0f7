"""Each default is written once: the typed schemas (finetune/config.py, finetune/pretraining/config.py)
and the YAML configs agree, every option of every config group composes, and pretraining's config is
the recipe the shipped tiny weights were made with (finetune/assets/tiny/pretrain.json)."""

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from finetune.config import ASSETS_DIR, CONFIGS_DIR, EvaluateConfig, TrainConfig, compose_config, register_schemas
from finetune.generation.config import GenerateConfig, register_generate_schema
from finetune.pretraining.config import PretrainConfig, register_pretrain_schema

PRETRAIN_DIR = CONFIGS_DIR.parent / "pretraining" / "configs"
# The model's files are not defaults of the schema: every `model=` option names its own (null in the schema).
PER_MODEL_OPTION = ("model.weights.", "model.judge.")
# What an option needs to compose on its own (a value that has no default).
NEEDS = {"model=diffusers": ["model.checkpoint=/nonexistent/sd15"]}


def _raw(config_name: str, config_dir=CONFIGS_DIR, overrides=()) -> dict:
    """The composed config as written (interpolations unresolved), without Hydra's own section."""
    register_schemas()
    register_pretrain_schema()
    register_generate_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    out = OmegaConf.to_container(cfg, resolve=False)
    out.pop("hydra", None)
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _disagreements(yaml: dict, schema: dict, skip=()) -> list[str]:
    yaml, schema = _flat(yaml), _flat(schema)
    return [f"{key}: YAML {yaml.get(key, '<absent>')!r}, schema {schema.get(key, '<absent>')!r}"
            for key in sorted(set(yaml) | set(schema))
            if not key.startswith(tuple(skip)) and yaml.get(key, "<absent>") != schema.get(key, "<absent>")]


@pytest.mark.parametrize("config_name, schema", [("train", TrainConfig), ("evaluate", EvaluateConfig),
                                                 ("generate", GenerateConfig)])
def test_schema_defaults_agree_with_the_default_yaml(config_name, schema):
    wrong = _disagreements(_raw(config_name), OmegaConf.to_container(OmegaConf.structured(schema), resolve=False),
                           skip=PER_MODEL_OPTION)
    assert not wrong, "\n".join(wrong)


def test_the_schema_names_no_model_files():
    schema = _flat(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False))
    assert all(schema[k] is None for k in schema if k.startswith(PER_MODEL_OPTION))
    assert _flat(_raw("train"))["model.weights.unet"] == "${finetune_asset:tiny/unet.safetensors}"


def _options() -> list[str]:
    out = []
    for path in sorted(CONFIGS_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONFIGS_DIR).as_posix()
        if group != "." and group != "hydra":
            out.append(f"{group}={path.stem}")
    return out


def test_every_group_option_is_listed():
    options = _options()
    assert len(options) == 25 and "model=tiny_random" in options and "generate=walk" in options and "hydra/launcher=slurm" in options
    assert not (CONFIGS_DIR / "pretrain").exists()  # pretraining's config sits beside its own schema


@pytest.mark.parametrize("option", _options())
def test_every_group_option_composes_into_the_typed_config(option):
    if option.startswith("generate="):  # finetune-generate's modes
        register_generate_schema()
        assert isinstance(compose_config("generate", [option]), GenerateConfig)
        return
    cfg = compose_config("train", [option, *NEEDS.get(option, [])])
    assert isinstance(cfg, TrainConfig)
    assert cfg.token.placeholder == "<red-checkered-heart>" or option == "experiment=sd_v1_cat"
    if option.startswith(("model=", "experiment=")):
        cfg = compose_config("evaluate", [option if option.startswith("model=") else "model=sd_v1", "embedding=x",
                                          *NEEDS.get(option, [])])
        assert isinstance(cfg, EvaluateConfig) and cfg.token.placeholder is None  # evaluate: from the file


def test_pretrain_schema_agrees_with_its_yaml():
    wrong = _disagreements(_raw("tiny", PRETRAIN_DIR),
                           OmegaConf.to_container(OmegaConf.structured(PretrainConfig), resolve=False))
    assert not wrong, "\n".join(wrong)


def test_pretrain_config_is_the_recipe_of_the_shipped_weights():
    record = json.loads((ASSETS_DIR / "tiny" / "pretrain.json").read_text())
    config = _raw("tiny", PRETRAIN_DIR)
    assert record["stages"]["unet"]["steps"] == config["unet"]["steps"] == 4000
    for key in ("preset", "seed", "export_dtype", "pool"):
        assert config[key] == record[key], key
    for stage in ("vae", "clip", "unet"):
        recorded = {k: v for k, v in record["stages"][stage].items() if k in config[stage]}
        assert len(recorded) >= 8, stage  # the record holds the recipe, not only a few keys
        assert recorded == {k: config[stage][k] for k in recorded}, stage


def test_stage_functions_take_their_defaults_from_the_schema():
    import inspect

    from finetune.pretraining.clip import train_clip
    from finetune.pretraining.config import ClipStageConfig, UNetStageConfig, VAEStageConfig
    from finetune.pretraining.unet import train_unet
    from finetune.pretraining.vae import train_vae

    for fn, schema in ((train_vae, VAEStageConfig()), (train_clip, ClipStageConfig()), (train_unet, UNetStageConfig())):
        params = inspect.signature(fn).parameters
        for key, value in vars(schema).items():
            default = params[key].default
            assert default is inspect.Parameter.empty or default == value, f"{fn.__name__}({key}={default}) vs {value}"
