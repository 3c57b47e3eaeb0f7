"""Checkpoint conversion (finetune/convert/): names, presets, safety, errors, the CLI and model= configs.

The output parity of converted models against diffusers/transformers is in
test_parity_diffusers.py; the tests here that need the reference classes skip without them.
"""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from finetune.convert import checkpoint_preset, convert_checkpoint, keymaps, open_checkpoint
from finetune.convert.configs import SD_V1_CONFIGS, infer_compvis_configs, preset_from_diffusers_config
from finetune.errors import ConfigError, DataError, MissingFileError
from finetune.models.presets import SD_V1, TINY, preset_from_dict, preset_to_dict
from tests.conftest import ROOT, compose_train

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
SD15_UNET, SD15_VAE, SD15_TEXT = (SD_V1_CONFIGS[m] for m in ("unet", "vae", "text_encoder"))


def reference():
    pytest.importorskip("torch", reason="needs torch: pip install -e '.[torch]' (or .[parity])")
    pytest.importorskip("diffusers", reason="needs diffusers: pip install -e '.[parity]'")
    pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[parity]'")
    from tests import sd_reference

    return sd_reference


def files_of(written) -> dict:
    return {c: load_file(str(written[c])) for c in COMPONENTS}


def assert_same_files(a, b):
    for component in COMPONENTS:
        x, y = load_file(str(a[component])), load_file(str(b[component]))
        assert x.keys() == y.keys()
        assert all(np.array_equal(x[k], y[k]) for k in x), component


# --------------------------------------------------------------------------- presets
def test_preset_json_round_trip_and_unknown_fields():
    for preset in (SD_V1, TINY):
        assert preset_from_dict(json.loads(json.dumps(preset_to_dict(preset)))) == preset
    data = preset_to_dict(TINY)
    data["unet"]["heads"] = 3
    with pytest.raises(ConfigError, match="unknown unet fields \\['heads'\\]"):
        preset_from_dict(data)


def test_sd15_config_gives_the_sd_v1_shapes():
    preset = preset_from_diffusers_config(SD15_UNET, SD15_VAE, SD15_TEXT, name="sd15")
    # the same architecture as keras-cv's SD v1; the numerics of CompVis/diffusers (exact GELU, 1e-6 norms)
    assert preset.text_encoder == SD_V1.text_encoder
    assert preset.unet == replace(SD_V1.unet, gelu="erf", transformer_norm_epsilon=1e-6)
    assert preset.vae == replace(SD_V1.vae, norm_epsilon=1e-6)
    assert preset.resolution == 512


def test_configs_outside_the_sd_v1_family_are_refused_by_name():
    unet = {**SD15_UNET, "class_embed_type": "timestep", "attention_head_dim": [5, 10, 20, 20]}
    with pytest.raises(ConfigError) as e:
        preset_from_diffusers_config(unet, {**SD15_VAE, "latents_mean": [0.1]}, {**SD15_TEXT, "vocab_size": 1000})
    message = str(e.value)
    for what in ("unet.class_embed_type='timestep'", "heads [5, 10, 20, 20]", "vae.latents_mean", "vocab_size=1000"):
        assert what in message


# --------------------------------------------------------------------------- CompVis names
def meta_state_dicts(unet_config, vae_config, text_config):
    """The reference models' state dicts on torch's meta device: names and shapes, no memory."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        models = UNet2DConditionModel(**unet_config), AutoencoderKL(**vae_config), CLIPTextModel(CLIPTextConfig(**text_config))
    return [m.state_dict() for m in models]


@pytest.mark.parametrize("size", ["small", "sd15"])
def test_compvis_names_agree_with_diffusers_single_file_converter(size):
    """The project's CompVis tables, inverted, give names that diffusers' own single-file converter
    (diffusers.loaders.single_file_utils) turns back into exactly the diffusers names."""
    ref = reference()
    from diffusers.loaders import single_file_utils as sfu

    configs = (ref.UNET, ref.VAE, ref.TEXT) if size == "small" else (SD15_UNET, SD15_VAE, SD15_TEXT)
    unet, vae, text = meta_state_dicts(*configs)
    compvis = ref.compvis_state_dict((unet, vae, text), to_array=lambda t: t)
    back_unet = sfu.convert_ldm_unet_checkpoint(compvis, dict(configs[0]))
    back_vae = sfu.convert_ldm_vae_checkpoint(compvis, dict(configs[1]))
    back_text = sfu.convert_ldm_clip_checkpoint(compvis)
    assert {k: tuple(v.shape) for k, v in back_unet.items()} == {k: tuple(v.shape) for k, v in unet.items()}
    assert {k: tuple(v.shape) for k, v in back_vae.items()} == {k: tuple(v.shape) for k, v in vae.items()}
    assert {keymaps.strip_text_model(k) for k in back_text if not k.endswith("position_ids")} == set(text)


def test_compvis_shapes_infer_the_sd15_preset():
    reference()
    unet, vae, text = meta_state_dicts(SD15_UNET, SD15_VAE, SD15_TEXT)
    shapes = [{k: tuple(v.shape) for k, v in sd.items()} for sd in (unet, vae, {keymaps.strip_text_model(k): v for k, v in text.items()})]
    inferred = preset_from_diffusers_config(*infer_compvis_configs(*shapes), name="sd15")
    assert inferred == preset_from_diffusers_config(SD15_UNET, SD15_VAE, SD15_TEXT, name="sd15")


@pytest.mark.slow
def test_sd15_every_key_mapped_and_every_shape_matches():
    """Full SD 1.5: every weight of diffusers' three models (meta device: no weights needed) goes to
    exactly one variable of the project's models of the derived preset, with the variable's shape."""
    reference()
    from finetune.convert.convert import plan_component
    from finetune.convert.readers import Tensors
    from finetune.models import build_component

    preset = preset_from_diffusers_config(SD15_UNET, SD15_VAE, SD15_TEXT, name="sd15")
    state = dict(zip(("unet", "vae", "text_encoder"), meta_state_dicts(SD15_UNET, SD15_VAE, SD15_TEXT)))
    taken = {name: set() for name in state}
    for component in COMPONENTS:
        source = keymaps.SOURCES[component][0]
        tensors = Tensors()
        for key, value in state[source].items():
            if key.endswith(keymaps.BUFFER_SUFFIXES):
                continue
            tensors.add(keymaps.strip_text_model(key), None, key, tuple(value.shape))
        plan = plan_component(build_component(preset, component), component, tensors)  # raises on any problem
        assert len({key for _, key in plan}) == len(plan)
        taken[source] |= {key for _, key in plan}
    for source, keys in state.items():
        assert taken[source] == {keymaps.strip_text_model(k) for k in keys if not k.endswith(keymaps.BUFFER_SUFFIXES)}


# --------------------------------------------------------------------------- conversion
def test_diffusers_folder_and_compvis_file_convert_to_the_same_weights(tmp_path):
    ckpt = reference().small_checkpoint()
    assert_same_files(ckpt.converted["diffusers"], ckpt.converted["compvis"])
    # without config= a CompVis file's heads are SD v1's (8 in the UNet, 64-wide in CLIP): same weights
    inferred = convert_checkpoint(ckpt.compvis, tmp_path / "inferred")
    assert_same_files(inferred, ckpt.converted["compvis"])
    preset = checkpoint_preset(inferred["preset"])
    assert (preset.unet.num_heads, preset.text_encoder.num_heads) == (8, 1)
    assert checkpoint_preset(ckpt.compvis) == preset  # model.preset= a CompVis file infers the same


def test_pickle_checkpoint_refused_without_opt_in_then_read_weights_only(tmp_path):
    ckpt = reference().small_checkpoint()
    import torch

    state = {k: torch.from_numpy(v) for k, v in load_file(str(ckpt.compvis)).items()}
    path = tmp_path / "sd-small.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, path)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="pickle file.*refused by default.*allow_pickle=true"):
        convert_checkpoint(path, out)
    assert not out.exists()
    written = convert_checkpoint(path, out, config=str(ckpt.diffusers), allow_pickle=True)
    assert_same_files(written, ckpt.converted["compvis"])
    with pytest.raises(DataError, match="refused by default"):  # model.preset / model.checkpoint never unpickle
        checkpoint_preset(path)


def test_refused_pickle_needs_no_torch(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(DataError, match="pickle file"):
        convert_checkpoint(path, tmp_path / "out")


def test_truncated_safetensors_is_one_clear_line_and_writes_nothing(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": np.ones((8, 4, 3, 3), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        convert_checkpoint(path, out)
    assert "truncated" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_missing_unused_and_unknown_keys_are_listed(tmp_path):
    ckpt = reference().small_checkpoint()
    folder = tmp_path / "broken"
    shutil.copytree(ckpt.diffusers, folder)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(unet_file))
    del tensors["down_blocks.0.attentions.1.proj_out.bias"]
    tensors["down_blocks.0.extra_layer.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(unet_file))
    with pytest.raises(ConfigError) as e:
        convert_checkpoint(folder, tmp_path / "out")
    message = str(e.value)
    assert "cannot convert the unet" in message
    assert "1 missing keys [down_blocks.0.attentions.1.proj_out.bias]" in message
    assert "1 unused keys [down_blocks.0.extra_layer.weight]" in message
    assert not (tmp_path / "out").exists()  # nothing half-written

    compvis = tmp_path / "extra.safetensors"
    tensors = load_file(str(ckpt.compvis))
    tensors["model.diffusion_model.input_blocks.1.2.weight"] = np.zeros(3, np.float32)
    tensors["cond_stage_model.extra"] = np.zeros(3, np.float32)
    save_file(tensors, str(compvis))
    with pytest.raises(ConfigError, match="2 unknown keys \\[cond_stage_model.extra, model.diffusion_model.input_blocks.1.2.weight\\]"):
        convert_checkpoint(compvis, tmp_path / "out2", config=str(ckpt.diffusers))


def test_shape_mismatch_is_listed(tmp_path):
    ckpt = reference().small_checkpoint()
    folder = tmp_path / "wrong"
    shutil.copytree(ckpt.diffusers, folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    (folder / "text_encoder" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ConfigError, match="cannot convert the text_encoder: .*shape mismatches .*mlp.fc1.weight \\[64, 32\\]"):
        convert_checkpoint(folder, tmp_path / "out")


def test_old_diffusers_names_are_read(tmp_path):
    """transformers < 5 writes `text_model.` names, diffusers < 0.15 `query/key/value/proj_attn` in the VAE."""
    ckpt = reference().small_checkpoint()
    folder = tmp_path / "old"
    shutil.copytree(ckpt.diffusers, folder)
    text_file = folder / "text_encoder" / "model.safetensors"
    save_file({"text_model." + k: v for k, v in load_file(str(text_file)).items()}, str(text_file))
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    old_names = {new: old for old, new in keymaps.DEPRECATED_VAE_ATTENTION.items()}  # to_q -> query, ...

    def old_name(key):
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        return key

    save_file({old_name(k): v for k, v in load_file(str(vae_file)).items()}, str(vae_file))
    assert any(".proj_attn." in k for k in load_file(str(vae_file)))
    assert_same_files(convert_checkpoint(folder, tmp_path / "out"), ckpt.converted["diffusers"])


def test_cli_converts_and_reports_errors_in_one_line(tmp_path):
    ckpt = reference().small_checkpoint()
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "finetune.convert", f"source={ckpt.diffusers}", f"out={out}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "use it with: finetune-train model=diffusers model.checkpoint=" in run.stdout
    assert_same_files({c: out / f"{c}.safetensors" for c in COMPONENTS}, ckpt.converted["diffusers"])

    bad = subprocess.run([sys.executable, "-m", "finetune.convert", f"source={tmp_path / 'x.ckpt'}", f"out={out}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_cli_usage_errors():
    run = subprocess.run([sys.executable, "-m", "finetune.convert", "source=x"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "out= is required" in run.stderr
    run = subprocess.run([sys.executable, "-m", "finetune.convert", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and "allow_pickle" in run.stdout


# --------------------------------------------------------------------------- model= configs
@pytest.mark.parametrize("source", ["diffusers", "compvis-file", "converted"])
def test_model_config_points_at_a_checkpoint(source):
    """`model=diffusers model.checkpoint=PATH`: the preset comes from the checkpoint, every component
    is converted on load (or read from a converted folder) and equals the converted files."""
    from finetune.assembly import load_component, resolve_model

    ckpt = reference().small_checkpoint()
    path = {"diffusers": ckpt.diffusers, "compvis-file": ckpt.compvis,
            "converted": ckpt.converted["diffusers"]["preset"].parent}[source]
    cfg = compose_train("model=diffusers", f"model.checkpoint={path}", "data.concept_dir=x")
    preset = resolve_model(cfg.model).preset
    assert preset.unet.block_channels == (32, 64) and preset.vae.block_channels == (32, 64)
    # a CompVis file has no config: SD v1's latent size 64 (x VAE factor 2) and 32 norm groups are assumed
    assert (preset.resolution, preset.unet.norm_groups) == ((128, 32) if source == "compvis-file" else (16, 8))
    expected = files_of(ckpt.converted["diffusers"])
    for component in ("text_encoder", "vae_decoder"):
        model = load_component(resolve_model(cfg.model), component)
        got = {w.path: np.asarray(w) for w in model.weights}
        assert got.keys() == expected[component].keys()
        assert all(np.array_equal(got[k], expected[component][k]) for k in got)


def test_model_config_checkpoint_errors(tmp_path):
    from finetune.assembly import load_component, resolve_model

    cfg = compose_train("model=diffusers", f"model.checkpoint={tmp_path / 'nothing'}", "data.concept_dir=x")
    with pytest.raises(MissingFileError, match="nothing: not found"):
        load_component(resolve_model(cfg.model), "unet")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="not a diffusers SD v1 folder"):
        open_checkpoint(tmp_path / "folder")
