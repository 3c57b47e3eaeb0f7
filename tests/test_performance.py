"""Performance tooling and options: the benchmark's FLOP counter, the benchmark itself on the tiny
model, and frozen weights stored in low precision (model.frozen_dtype)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune.errors import ConfigError
from tests.conftest import CONCEPT, ROOT, compose_train

SCRIPT = ROOT / "scripts" / "benchmark.py"


def test_graph_flops_counts_live_matmuls_and_convs_only():
    w = tf.random.normal([16, 32])
    kernel = tf.random.normal([3, 3, 3, 4])

    def step(x, image, a, b):
        with tf.GradientTape() as tape:
            tape.watch(image)
            y = tf.reduce_sum(tf.nn.conv2d(image, kernel, 1, "SAME"))
        grad = tape.gradient(y, image)  # input gradient only: the filter gradient is dead code
        _unused = x @ tf.transpose(x)  # dead: not an output
        return x @ w, tf.einsum("bij,bjk->bik", a, b), y, grad

    concrete = tf.function(step).get_concrete_function(
        tf.TensorSpec([8, 16]), tf.TensorSpec([1, 5, 5, 3]), tf.TensorSpec([2, 3, 4]), tf.TensorSpec([2, 4, 5])
    )
    from finetune.benchmarks.speed_tf import graph_flops

    counted = graph_flops(concrete)
    conv = 2 * (5 * 5 * 4) * (3 * 3 * 3)
    assert counted["by_op_type"] == {"MatMul": 2 * 8 * 16 * 32, "Einsum": 2 * 2 * 3 * 4 * 5, "Conv2D": conv,
                                     "Conv2DBackpropInput": conv}
    assert counted["flops"] == sum(counted["by_op_type"].values())
    assert counted["conv_weight_gradients_live"] == 0


def test_frozen_weights_in_bfloat16_vectors_and_optimizer_in_float32(rng):
    from tests.test_training import batches, build_tuner, snapshot

    cfg = compose_train("model=tiny_random", f"data.concept_dir={CONCEPT}", "eval.enabled=false", "trainer.batch_size=2",
                        "model.precision=mixed_bfloat16", "model.frozen_dtype=bfloat16", "trainer.weight_decay=0.1")
    tuner, text_encoder, unet = build_tuner(cfg, latent_hw=8, rng=rng)
    try:
        assert {w.dtype for w in unet.weights} == {"bfloat16"}
        frozen = [w for w in text_encoder.weights if w is not tuner.learned_vectors]
        assert {w.dtype for w in frozen} == {"bfloat16"}
        assert tuner.learned_vectors.dtype == "float32"
        before_unet, before_text = snapshot(unet), snapshot(text_encoder)
        tuner.fit(batches(2, 2), epochs=1, verbose=0, shuffle=False)
        assert {v.dtype for v in tuner.optimizer.variables if v.shape == tuner.learned_vectors.shape} == {"float32"}
        after_text = snapshot(text_encoder)
        assert [k for k in before_text if before_text[k] != after_text[k]] == [
            "text_encoder/token_embedding/learned_vectors"]
        assert snapshot(unet) == before_unet
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(tuner.learned_vectors)))
    finally:
        keras.config.set_dtype_policy("float32")


def test_frozen_dtype_needs_its_mixed_precision():
    from finetune.assembly import load_component, resolve_model

    cfg = compose_train("model=tiny_random", f"data.concept_dir={CONCEPT}", "model.frozen_dtype=bfloat16")
    with pytest.raises(ConfigError, match="model.frozen_dtype=bfloat16 needs model.precision=mixed_bfloat16"):
        load_component(resolve_model(cfg.model), "unet")
    cfg = compose_train("model=tiny_random", f"data.concept_dir={CONCEPT}", "model.frozen_dtype=int8")
    with pytest.raises(ConfigError, match="model.frozen_dtype='int8'"):
        load_component(resolve_model(cfg.model), "unet")


def test_benchmark_runs_on_the_tiny_model_with_frozen_bfloat16(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "model=tiny_random", "model.precision=mixed_bfloat16",
               "model.frozen_dtype=bfloat16", "--steps", "2", "--warmup", "1", "--sample-steps", "2",
               "--matmul-size", "256", "--matmul-repeats", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: median step" in done.stdout and "sample: s per image" in done.stdout
    result = json.loads(out.read_text())
    train, sample = result["training"], result["sampling"]
    assert set(result["matmul_peak"]) == {"float32", "bfloat16"}
    assert train["peak_dtype"] == "bfloat16" and train["step_traces"] == 1
    assert train["flops_per_step"] > 0 and 0 < train["fraction_of_peak"]
    # Only the learned vectors train: no weight gradient of a frozen layer runs, and a step costs
    # about twice the forward passes (forward + input gradients).
    assert train["trainable_variables"] == ["text_encoder/token_embedding/learned_vectors"]
    assert train["weight_gradients"]["conv_weight_gradients_live"] == 0
    assert train["weight_gradients"]["dense_weight_gradients_live"] == 0
    assert 1.5 < train["step_over_forward"] < 2.2
    assert sample["s_per_image"] > 0 and sample["unet_traces"] == 1 and train["peak_rss_gb"] > 0
