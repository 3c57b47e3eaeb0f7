"""python -m finetune.generate on the tiny model: every mode end to end (2 DDIM steps), the same
files twice, txt2img equal to the renderer, several embeddings of different formats in one prompt,
and user errors as one line with no output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.errors import ConfigError, DataError, FinetuneError, MissingFileError

ROOT = Path(__file__).resolve().parents[1]
EMBEDDING = ROOT / "tests" / "fixtures" / "red-checkered-heart.safetensors"
STEPS = "generate.num_steps=2"


def compose(*overrides: str):
    from finetune.config import compose_config
    from finetune.generation.config import register_generate_schema

    register_generate_schema()
    return compose_config("generate", [f"embeddings=[{EMBEDDING}]", STEPS, *overrides])


def run(tmp_path: Path, name: str, *overrides: str) -> Path:
    from finetune.generation.job import generate

    out = tmp_path / name
    generate(compose(*overrides), out)
    return out


@pytest.fixture(scope="module")
def input_png(tmp_path_factory) -> Path:
    """A toy-world render (a blue circle), 96 x 64 px: img2img crops and resizes it to 64 x 64."""
    from finetune.toyworld.render import Scene, render

    image = render(Scene("circle", "blue", "large", "center", "white", "plain", seed=1))
    wide = np.concatenate([np.full((64, 16, 3), 245, np.uint8), image, np.full((64, 16, 3), 245, np.uint8)], 1)
    path = tmp_path_factory.mktemp("inputs") / "circle.png"
    Image.fromarray(wide).save(path)
    return path


MODES = {
    "txt2img": ['generate.prompts=["a photo of {}","a (blue:1.3) heart"]', "generate.num_images=2",
                'generate.negative_prompt="[<concept>]"'],
    "img2img": ["generate=img2img", "generate.strength=0", 'generate.prompts=["a red square"]'],
    "inpaint": ["generate=inpaint", "generate.box='48,0,80,64'", 'generate.prompts=["a green star"]'],
    "outpaint": ["generate=outpaint", "generate.outpaint.left=16", "generate.outpaint.right=16"],
    "mix": ["generate=mix", "generate.mix_guidance=true", "generate.weights=[0.75,0.25]",
            'generate.prompts=["a photo of {}","a photo of my-stripes"]'],
    "walk": ["generate=walk", "generate.end_seed=5"],
    "variations": ["generate=variations", "generate.num_images=3"],
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode(tmp_path, input_png, mode):
    """Each mode writes its images, grid.png and generate.json; the walk (PNGs, GIF, grid, JSON) runs
    twice and must write identical files (same config and seed). img2img runs at strength 0 (the VAE
    round trip; variations cover strength 0.5); mix uses two embeddings of different formats."""
    from finetune.export.formats import FORMATS

    vectors = np.random.default_rng(0).standard_normal((2, 64)).astype("float32")
    other = FORMATS["a1111_safetensors"].save(tmp_path / "other", "my-stripes", vectors)
    overrides = [f"generate.image={input_png}", f"embeddings=[{EMBEDDING},{other}]", *MODES[mode]]
    first = run(tmp_path, "a", *overrides)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert Path("grid.png") in files and Path("generate.json") in files
    if mode == "walk":
        second = run(tmp_path, "b", *overrides)
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        for f in files:
            assert (first / f).read_bytes() == (second / f).read_bytes(), f
    meta = json.loads((first / "generate.json").read_text())
    assert meta["mode"] == mode and meta["embeddings"][0]["token"] == "<concept>"
    images = [np.asarray(Image.open(first / r["file"])) for r in meta["images"]]
    expected = {"txt2img": 4, "img2img": 2, "inpaint": 2, "outpaint": 2, "mix": 2, "walk": 8, "variations": 3}
    assert len(images) == expected[mode] == len(list((first / "images").glob("*.png")))
    shape = (64, 96, 3) if mode == "outpaint" else (64, 64, 3)
    assert all(im.shape == shape for im in images)
    assert all(im.std() > 1 for im in images)  # not blank
    known = np.asarray(Image.open(input_png))[:, 16:80]  # the center crop the model sees
    if mode == "inpaint":  # box x 48..80 of the 96 px input = x 32..64 of the crop; seam 3 px
        assert all(np.array_equal(im[:, :29], known[:, :29]) for im in images)
        assert all(np.abs(im[:, 32:].astype(int) - known[:, 32:]).mean() > 2 for im in images)
    if mode == "outpaint":
        assert all(np.array_equal(im[:, 16:80], known) for im in images)
    if mode == "walk":
        gif = Image.open(first / "walk.gif")
        assert gif.n_frames == 8 and gif.size == (64, 64)
        assert meta["files"]["gif"] == "walk.gif"
        import imageio.v2 as imageio  # the video extra (in the test extras)

        assert meta["files"]["mp4"] == "walk.mp4"
        video = imageio.mimread(first / "walk.mp4")
        assert len(video) == 8 and video[0].shape == (64, 64, 3)
        assert np.abs(video[0].astype(int) - images[0]).mean() < 10  # the first frame, through the codec
        assert np.abs(images[0].astype(int) - images[-1]).mean() > 5  # it goes somewhere
    if mode == "mix":  # two embeddings (diffusers, A1111 safetensors), both tokens in the prompts
        assert meta["images"][0]["weights"] == [0.75, 0.25]
        assert [e["token"] for e in meta["embeddings"]] == ["<concept>", "my-stripes"]
        assert [e["num_vectors"] for e in meta["embeddings"]] == [1, 2]
        assert meta["images"][0]["prompts"] == ["a photo of <concept>", "a photo of my-stripes"]
    if mode == "img2img":  # strength 0: the tiny VAE's round trip of the input
        assert all(np.abs(im.astype(int) - known).mean() < 8 for im in images)
        assert meta["images"][0]["strength"] == 0


def test_txt2img_equals_the_renderer(tmp_path):
    """No weights, no learned negative: the job's images are the evaluation renderer's, bit for bit."""
    from finetune.assembly import build_pipeline, resolve_model
    from finetune.export.formats import load_any
    from finetune.sampling import SamplerSettings

    out = run(tmp_path, "run", 'generate.prompts=["a photo of {}"]', "generate.num_images=2")
    cfg = compose()
    e = load_any(EMBEDDING)
    pipeline = build_pipeline(resolve_model(cfg.model), e.name, len(e.vectors), 64, e.vectors)
    rendered = pipeline.renderer.render(["a photo of <concept>"], SamplerSettings(num_steps=2, guidance_scale=5.0),
                                        images_per_prompt=2, progress=False)
    meta = json.loads((out / "generate.json").read_text())
    for r, record in zip(rendered, meta["images"]):
        assert record["seed"] == r.seed
        np.testing.assert_array_equal(np.asarray(Image.open(out / record["file"])), r.image)


def test_prompt_weights_on_the_tiny_text_encoder():
    """No weights: exactly the plain encoding. (blue:1.5): only the mean-rescaled rows change, the
    blue token's row most, and the encoding's mean is kept."""
    from finetune.assembly import load_text_encoder, resolve_model
    from finetune.sampling.prompts import encode_weighted
    from finetune.tokens.tokenizer import ClipTokenizer

    tok = ClipTokenizer()
    text_encoder = load_text_encoder(resolve_model(compose().model), 0)
    plain = np.asarray(text_encoder(tok(["a blue heart"])))
    np.testing.assert_array_equal(encode_weighted(tok, text_encoder, ["a blue heart"]), plain)
    weighted = encode_weighted(tok, text_encoder, ["a (blue:1.5) heart"])[0]
    assert weighted.mean() == pytest.approx(plain[0].mean(), rel=1e-5)
    change = np.abs(weighted - plain[0]).mean(-1)
    assert change.argmax() == 2 and change[2] > 3 * np.median(change)


@pytest.mark.parametrize("overrides,error,match", [
    (["generate=img2img", "generate.strength=1.5"], ConfigError, r"generate.strength=1.5 must be a number in \[0, 1\]"),
    (["generate=img2img", "generate.image=/nonexistent.png"], MissingFileError, "does not exist"),
    (["generate=inpaint", "generate.mask=SMALL"], DataError, "mask is 32x32 pixels but the image is 96x64"),
    (["generate=inpaint"], ConfigError, "exactly one of generate.mask"),
    (['generate.prompts=["' + "a red heart " * 30 + '"]'], ConfigError, "tokens"),
    (["embeddings=[WIDE]"], DataError, "width 64"),
    (["generate=mix", "generate.weights=[1]"], ConfigError, "weights"),
    (["generate=walk", "generate.frames=1"], ConfigError, "frames"),
])
def test_user_errors_stop_before_any_output(tmp_path, input_png, overrides, error, match):
    from finetune.export.diffusers_format import save_diffusers_embedding
    from finetune.generation.job import generate

    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32), "white").save(small)
    wide = save_diffusers_embedding(tmp_path / "wide.safetensors", "<wide>", np.zeros((1, 768), "float32"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    overrides = [o.replace("SMALL", str(small)).replace("WIDE", str(wide)) for o in overrides]
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        generate(compose(f"generate.image={input_png}", *overrides), out)
    assert not out.exists()
    with pytest.raises(DataError, match="cannot be decoded"):
        generate(compose(f"generate.image={broken}", "generate=img2img"), out)


def test_cli_user_error_is_one_line_exit_2_no_folder(tmp_path, input_png):
    run_dir = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "finetune.generate", "generate=img2img", f"generate.image={input_png}",
                           "generate.strength=-0.5", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error: generate.strength=-0.5"), proc.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert not run_dir.exists()
