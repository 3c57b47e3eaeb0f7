"""The trainer: what it changes, what it never changes, determinism and resume."""

import hashlib
import shutil

import keras
import numpy as np
import pytest

from finetune.diffusion.schedule import NoiseSchedule
from finetune.export.diffusers_format import load_diffusers_embedding
from finetune.assembly import load_component, resolve_model
from finetune.models.presets import get_preset
from finetune.training.checkpoints import list_checkpoints
from finetune.training.fine_tuner import StableDiffusionFineTuner
from finetune.training.build import make_optimizer
from finetune.training.run import train
from finetune.training.schedules import WarmupDecay
from tests.conftest import FAST, compose_train


def snapshot(model):
    """A digest of every weight's bytes (not copies: the SD v1 UNet's weights are 3.4 GB)."""
    return {w.path: hashlib.blake2b(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes()).hexdigest()
            for w in model.weights}


def build_tuner(cfg, latent_hw: int, rng, num_variants=3, num_captions=2):
    source = resolve_model(cfg.model)
    preset = source.preset
    text_encoder = load_component(source, "text_encoder", num_placeholder_vectors=cfg.token.num_vectors)
    text_encoder.token_embedding.set_learned_vectors(text_encoder.token_embedding.initial_vectors([320], 0))
    unet = load_component(source, "unet")
    c = preset.vae.latent_channels
    moments = rng.standard_normal((num_variants, latent_hw, latent_hw, 2 * c)).astype("float32")
    tokens = np.full((num_captions, preset.text_encoder.max_length), preset.end_id, "int32")
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = preset.start_id, 320, preset.text_encoder.vocab_size  # "a <token>"
    tuner = StableDiffusionFineTuner(text_encoder, unet, moments, tokens, NoiseSchedule(), preset.vae.scaling_factor, seed=0)
    tuner.compile(optimizer=make_optimizer(cfg.trainer))
    return tuner, text_encoder, unet


def batches(n, batch_size, num_variants=3, num_captions=2):
    import tensorflow as tf

    variant = np.arange(n * batch_size, dtype="int32").reshape(n, batch_size) % num_variants
    caption = np.arange(n * batch_size, dtype="int32").reshape(n, batch_size) % num_captions
    return tf.data.Dataset.from_tensor_slices(np.stack([variant, caption], axis=-1))  # columns VARIANT, CAPTION


def check_only_vectors_change(cfg, latent_hw, rng, steps=2):
    tuner, text_encoder, unet = build_tuner(cfg, latent_hw, rng)
    before_text, before_unet = snapshot(text_encoder), snapshot(unet)
    history = tuner.fit(batches(steps, cfg.trainer.batch_size), epochs=1, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    after_text, after_unet = snapshot(text_encoder), snapshot(unet)
    changed = [k for k in before_text if before_text[k] != after_text[k]]  # bitwise, the table included
    assert changed == ["text_encoder/token_embedding/learned_vectors"]
    assert before_unet == after_unet
    assert [v.path for v in tuner.trainable_variables] == ["text_encoder/token_embedding/learned_vectors"]
    return tuner


def test_only_learned_vectors_change_even_with_weight_decay(rng):
    cfg = compose_train(*FAST, "trainer.weight_decay=0.5", "trainer.learning_rate=0.1")
    check_only_vectors_change(cfg, latent_hw=8, rng=rng, steps=3)


@pytest.mark.slow
def test_sd_v1_two_steps_at_128px(rng, tmp_path):
    from finetune.export.diffusers_format import save_diffusers_embedding

    cfg = compose_train(*FAST, "model=sd_v1_random", "data.resolution=128", "trainer.batch_size=1", "trainer.weight_decay=0.01")
    tuner = check_only_vectors_change(cfg, latent_hw=16, rng=rng, steps=2)
    vectors = keras.ops.convert_to_numpy(tuner.learned_vectors)
    assert vectors.shape == (1, 768)
    path = save_diffusers_embedding(tmp_path / "learned_embeds.safetensors", "<concept>", vectors)
    name, loaded, _ = load_diffusers_embedding(path)
    assert name == "<concept>" and loaded.tobytes() == vectors.astype("float32").tobytes()


def test_same_config_twice_gives_identical_vectors(tmp_path):
    cfg = compose_train(*FAST, "trainer.max_steps=4", "trainer.lr_schedule=cosine", "trainer.warmup_steps=1",
                        "trainer.validation.every=2")
    first = train(cfg, tmp_path / "a")
    second = train(cfg, tmp_path / "b")
    _, a, meta = load_diffusers_embedding(tmp_path / "a" / "learned_embeds.safetensors")
    _, b, _ = load_diffusers_embedding(tmp_path / "b" / "learned_embeds.safetensors")
    assert a.tobytes() == b.tobytes()
    # The validation loss: the same bits (float32 values, exact in JSON), and it moved with the vectors.
    validation = first["validation_history"]
    assert validation["step"] == [2, 4] and validation == second["validation_history"]
    assert np.all(np.isfinite(validation["loss"])) and validation["loss"][0] != validation["loss"][1]
    assert first["best"]["by"] == "validation_loss" and first["best"]["step"] in (2, 4)
    _, best, best_meta = load_diffusers_embedding(tmp_path / "a" / "learned_embeds-best.safetensors")
    assert best_meta["steps"] == str(first["best"]["step"]) and (first["best"]["step"] != 4 or best.tobytes() == a.tobytes())
    assert meta["steps"] == "4" and meta["preset"] == "tiny" and meta["initializer"] == "shape"
    # and a different seed learns something else
    train(compose_train(*FAST, "trainer.max_steps=4", "trainer.lr_schedule=cosine", "trainer.warmup_steps=1", "seed=1"),
          tmp_path / "c")
    _, c, _ = load_diffusers_embedding(tmp_path / "c" / "learned_embeds.safetensors")
    assert not np.array_equal(a, c)


class Kill(keras.callbacks.Callback):
    """Stops the process's run abruptly after `after` batches, as a kill would."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, accumulation):
    overrides = (*FAST, "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.lr_schedule=linear",
                 f"trainer.gradient_accumulation_steps={accumulation}", "trainer.weight_decay=0.01",
                 "trainer.validation.every=1")
    full_metrics = train(compose_train(*overrides), tmp_path / "full")
    _, full, _ = load_diffusers_embedding(tmp_path / "full" / "learned_embeds.safetensors")

    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        train(compose_train(*overrides), runs / "first", extra_callbacks=[Kill(after=5 * accumulation)])
    assert [p.name for p in list_checkpoints(runs / "first")] == ["step-000002", "step-000004"]
    assert not (runs / "first" / "learned_embeds.safetensors").exists()

    metrics = train(compose_train(*overrides, "trainer.resume=auto"), runs / "second")
    assert metrics["resumed_from_step"] == 4
    _, resumed, _ = load_diffusers_embedding(runs / "second" / "learned_embeds.safetensors")
    np.testing.assert_allclose(resumed, full, rtol=0, atol=1e-6)
    assert resumed.tobytes() == full.tobytes()
    # The validation loss of every step, bitwise: steps 1-4 from the checkpoint's history, 5-6 computed again.
    assert metrics["validation_history"]["step"] == [1, 2, 3, 4, 5, 6]
    assert metrics["validation_history"] == full_metrics["validation_history"]
    assert metrics["best"] == full_metrics["best"]


EARLY = (*FAST, "trainer.max_steps=30", "trainer.validation.every=1", "trainer.early_stopping=true",
         "trainer.early_stopping_window=4", "trainer.early_stopping_patience=2", "trainer.early_stopping_cooldown=3",
         "export.formats=[diffusers,kohya]")


def test_early_stopping_cools_down_then_stops_and_writes_every_output(tmp_path):
    from finetune.training.validation import should_stop

    cfg = compose_train(*EARLY, "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0")  # 0: keep every one
    metrics = train(cfg, tmp_path / "run")
    losses = metrics["validation_history"]["loss"]
    # The criterion holds first where the plain function of the losses says so; 3 cooldown updates follow.
    decided = next(n for n in range(1, 31) if should_stop(losses[:n], 4, 0.39, 2))
    assert metrics["early_stopping_decided_at"] == decided
    assert metrics["stop_reason"] == "early_stopping" and metrics["steps"] == decided + 3 < 30
    assert metrics["loss_history"]["step"][-1] == decided + 3 and len(losses) == decided + 3
    # The cooldown's rates: the schedule's, times 3/3, 2/3, 1/3 (update u is step u + 1); before it, the schedule's.
    schedule = WarmupDecay(cfg.trainer.learning_rate, 30, cfg.trainer.warmup_steps, cfg.trainer.lr_schedule)
    expected = [float(schedule(u)) * min(1.0, (decided + 3 - u) / 3) for u in range(decided + 3)]
    np.testing.assert_allclose(metrics["loss_history"]["lr"], expected, rtol=1e-6)
    assert metrics["loss_history"]["lr"][:decided] == [float(schedule(u)) for u in range(decided)]  # same bits
    _, vectors, meta = load_diffusers_embedding(tmp_path / "run" / "learned_embeds.safetensors")
    assert meta["steps"] == str(decided + 3)
    assert (tmp_path / "run" / "export" / "kohya").is_dir() and (tmp_path / "run" / "report.html").is_file()
    assert metrics["max_steps"] == 30
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), metrics["vocabulary_mean_norm"], atol=1e-4)

    # Killed before its final files, resumed from a checkpoint before the decision, inside the cooldown or
    # at its end (no more updates): the same decision, the same cooldown, the same bits.
    for resume_at in (decided - 1, decided + 1, decided + 3):
        resumed = tmp_path / f"elsewhere-{resume_at}" / "resumed"  # resume=auto also looks in sibling folders
        shutil.copytree(tmp_path / "run", resumed,
                        ignore=shutil.ignore_patterns("learned_embeds*", "metrics.json", "export"))
        for later in range(resume_at + 1, decided + 4):
            shutil.rmtree(resumed / "checkpoints" / f"step-{later:06d}")
        again = train(compose_train(*EARLY, "trainer.resume=auto"), resumed)
        assert again["resumed_from_step"] == resume_at and again["steps"] == decided + 3
        assert again["loss_history"] == metrics["loss_history"]
        assert ((resumed / "learned_embeds.safetensors").read_bytes()
                == (tmp_path / "run" / "learned_embeds.safetensors").read_bytes())


def test_resume_auto_ignores_checkpoints_of_other_configs(tmp_path):
    runs = tmp_path / "runs"
    train(compose_train(*FAST, "trainer.max_steps=2", "trainer.checkpoint_every=1", "seed=5"), runs / "other")
    metrics = train(compose_train(*FAST, "trainer.max_steps=2", "trainer.resume=auto"), runs / "mine")
    assert metrics["resumed_from_step"] == 0


def test_lr_schedules():
    const = WarmupDecay(1.0, total_steps=10, warmup_steps=2, kind="constant")
    assert [round(float(const(s)), 4) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    lin = WarmupDecay(1.0, total_steps=10, warmup_steps=0, kind="linear")
    assert [round(float(lin(s)), 4) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    cos = WarmupDecay(2.0, total_steps=10, warmup_steps=0, kind="cosine")
    assert [round(float(cos(s)), 4) for s in (0, 5, 10)] == [2.0, 1.0, 0.0]


def test_the_optimizer_reads_the_schedule_per_update_under_accumulation_and_cools_down():
    """Keras hands a schedule its micro-step count: with 2 micro-steps per update, updates 0-4 of a linear
    schedule over 10 updates must get 1.0, 0.9, ... (not 0.9 at the second update's first micro-step)."""
    from finetune.training.schedules import UpdateSchedule

    schedule = UpdateSchedule(WarmupDecay(1.0, 10, 0, "linear"), accumulation=2, cooldown_steps=4)
    v = keras.Variable(np.zeros(2, "float32"))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, gradient_accumulation_steps=2)
    optimizer.build([v])
    schedule.add_cooldown_variable(optimizer)
    rates = []
    for micro in range(14):
        if micro == 6:
            schedule.start_cooldown(3)  # after 3 updates: updates 3..6 at 4/4, 3/4, 2/4, 1/4 of the schedule
        rates.append(round(float(optimizer.learning_rate), 4))
        optimizer.apply_gradients([(np.ones(2, "float32"), v)])
    assert rates == [1.0, 1.0, 0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.45, 0.45, 0.25, 0.25, 0.1, 0.1]
    assert any(v is schedule.cooldown_start for v in optimizer.variables)  # in the JAX step's state


def test_scale_lr_multiplies_by_batch_and_accumulation():
    cfg = compose_train(*FAST, "trainer.scale_lr=true", "trainer.batch_size=3", "trainer.gradient_accumulation_steps=2",
                        "trainer.learning_rate=0.001")
    assert make_optimizer(cfg.trainer).learning_rate.numpy() == pytest.approx(0.006)


@pytest.mark.parametrize("precision", ["mixed_bfloat16"])
def test_mixed_precision_trains_float32_vectors(tmp_path, precision):
    import keras

    try:
        cfg = compose_train(*FAST, "trainer.max_steps=2", f"model.precision={precision}")
        metrics = train(cfg, tmp_path)
    finally:
        keras.config.set_dtype_policy("float32")
    _, vectors, _ = load_diffusers_embedding(tmp_path / "learned_embeds.safetensors")
    assert vectors.dtype == np.float32 and np.all(np.isfinite(vectors))
    assert np.isfinite(metrics["final_loss"])


def test_gradient_checkpointing_gives_the_same_steps(monkeypatch):
    """Rematerialized UNet blocks: same losses and vectors as keeping the activations."""
    wrapped = []
    remat = keras.remat
    monkeypatch.setattr(keras, "remat", lambda f: (wrapped.append(f), remat(f))[1])
    results = []
    for checkpointing in (False, True):
        cfg = compose_train(*FAST, "trainer.learning_rate=0.05")
        tuner, _, unet = build_tuner(cfg, latent_hw=8, rng=np.random.default_rng(0))
        unet.gradient_checkpointing = checkpointing
        start = keras.ops.convert_to_numpy(tuner.learned_vectors)
        history = tuner.fit(batches(3, cfg.trainer.batch_size), epochs=1, verbose=0, shuffle=False)
        results.append((history.history["loss"], keras.ops.convert_to_numpy(tuner.learned_vectors)))
        if not checkpointing:
            assert not wrapped
    spec = get_preset("tiny").unet
    blocks = len(spec.block_channels) * (2 * spec.layers_per_block + 1) + 3 + sum(spec.attention) * (2 * spec.layers_per_block + 1)
    assert wrapped and len(wrapped) % blocks == 0  # every ResBlock and transformer, at each trace of the step
    (loss_a, vec_a), (loss_b, vec_b) = results
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    np.testing.assert_allclose(vec_b, vec_a, atol=1e-5)
    assert np.abs(vec_a - start).max() > 1e-2  # the steps moved the vectors
