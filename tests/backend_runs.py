"""What tests/test_backend_jax.py compares between backends, run in a fresh process (Keras fixes its
backend at import): `KERAS_BACKEND=<backend> python tests/backend_runs.py OUT_DIR [--no-tensorflow | --once]`. Writes
OUT_DIR/result.json and OUT_DIR/*.npy:

    step       the first step's loss and gradient for one fixed batch (no update)
    train      20 steps of the tiny model, twice (a, b), and a kill after step 10's checkpoint + resume
               (learned vectors, and the validation loss every 5 steps: result.json); with `--once` only a
               (the reference side: TensorFlow's same-config and resume runs are tests/test_training.py's)
    frozen     weight digests of the text encoder and UNet before / after a few steps
    render     a 25-step DDIM render with guidance of two prompts (float images in [-1, 1])
    modules    the TensorFlow modules imported after building the trainer and renderer (before any data stage)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONCEPT = ROOT / "finetune" / "assets" / "concepts" / "red-checkered-heart"
FAST = ["model=tiny", f"data.concept_dir={CONCEPT}", "trainer.batch_size=2", "eval.enabled=false",
        "trainer.checkpoint_every=0"]
TRAIN = [*FAST, "trainer.max_steps=20", "trainer.checkpoint_every=10", "trainer.lr_schedule=cosine",
         "trainer.weight_decay=0.01", "trainer.learning_rate=0.02", "trainer.validation.every=5"]


def digests(model) -> dict[str, str]:
    import keras

    return {w.path: hashlib.blake2b(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes()).hexdigest()
            for w in model.weights}


def step_and_render(out: Path, result: dict) -> None:
    """Without the data stage: the trainer on fixed latents, its first step, frozen weights, a render."""
    import keras

    from finetune.assembly import build_renderer, make_tokenizer, resolve_model
    from finetune.config import compose_config
    from finetune.sampling import SamplerSettings
    from finetune.training.build import build_tuner

    cfg = compose_config("train", [*FAST, "trainer.weight_decay=0.5", "trainer.learning_rate=0.1"])
    source = resolve_model(cfg.model)
    tokenizer, _ = make_tokenizer("<concept>", 1, source.preset.text_encoder.max_length)
    moments = np.random.default_rng(0).standard_normal((3, 8, 8, 8)).astype("float32")
    moments[..., 4:] = -2.0
    captions = tokenizer(["a photo of a <concept>", "a rendering of the <concept>"])
    tuner, _ = build_tuner(cfg, source, moments, captions, tokenizer.encode("shape"))
    batch = np.array([[0, 0], [2, 1]], "int32")
    loss, gradient = tuner.loss_and_gradient(batch, 0)
    result["step"] = {"loss": loss}
    np.save(out / "gradient.npy", gradient)
    renderer = build_renderer(source, tokenizer, tuner.text_encoder, tuner.unet, cfg.data.resolution)
    result["modules"] = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))[:5]

    before = {**digests(tuner.text_encoder), **digests(tuner.unet)}
    tuner.fit(np.tile(batch, (4, 1)), batch_size=2, epochs=1, verbose=0, shuffle=False)
    after = {**digests(tuner.text_encoder), **digests(tuner.unet)}
    result["frozen"] = {"changed": sorted(k for k in before if before[k] != after[k]),
                        "trainable": [v.path for v in tuner.trainable_variables]}

    latents = renderer.sample_latents(["a photo of a <concept>", "a drawing of a <concept>"],
                                      SamplerSettings(num_steps=25, guidance_scale=5.0, seed=3), 1)
    images = keras.ops.convert_to_numpy(renderer.decode(latents))
    np.save(out / "render.npy", images)


def train_runs(out: Path, result: dict, once: bool = False) -> None:
    import keras

    from finetune.config import compose_config
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.training.run import train

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == 15:  # after step 10's checkpoint, before step 20's
                raise KeyboardInterrupt

    validation, folders = {}, {}
    for name in ("a",) if once else ("a", "b"):
        folders[name] = out / name
        validation[name] = train(compose_config("train", TRAIN), folders[name])["validation_history"]
    result["train"] = {"validation": validation}
    if not once:
        try:
            train(compose_config("train", TRAIN), out / "runs" / "first", extra_callbacks=[Kill()])
        except KeyboardInterrupt:
            pass
        folders["resumed"] = out / "runs" / "second"
        metrics = train(compose_config("train", [*TRAIN, "trainer.resume=auto"]), folders["resumed"])
        validation["resumed"] = metrics["validation_history"]
        result["train"]["resumed_from_step"] = metrics["resumed_from_step"]
    for name, folder in folders.items():
        _, vectors, _ = load_diffusers_embedding(folder / "learned_embeds.safetensors")
        np.save(out / f"vectors-{name}.npy", vectors)


class _NoTensorFlow:
    """`--no-tensorflow`: importing TensorFlow fails, as on a machine where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/backend_runs.py)")


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        sys.meta_path.insert(0, _NoTensorFlow())
    import keras

    from finetune.backends import enable_determinism

    enable_determinism()  # as a training run does first (on a GPU: XLA's deterministic ops)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = {"backend": keras.backend.backend()}
    step_and_render(out_dir, outcome)
    if "--no-tensorflow" not in sys.argv:
        train_runs(out_dir, outcome, once="--once" in sys.argv)
    (out_dir / "result.json").write_text(json.dumps(outcome, indent=1))
