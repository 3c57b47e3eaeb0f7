"""The JAX backend against TensorFlow: the same step, the same vectors, the same render; determinism and
resume on JAX; the step path without TensorFlow; a CLI run; two devices. Each backend runs in its own
process (Keras fixes the backend at import): tests/backend_runs.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from finetune.export.diffusers_format import load_diffusers_embedding
from tests.conftest import CONCEPT, ROOT

pytest.importorskip("jax")
pytestmark = pytest.mark.xdist_group("jax")  # one worker runs them one after another: they share the runs below


def run_backend(backend: str, out, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "backend_runs.py"), str(out), *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    out = {}
    for backend, flags in (("tensorflow", ["--once"]), ("jax", [])):  # TensorFlow: the reference side only
        run_backend(backend, root / backend, *flags)
        out[backend] = root / backend
    return out


def result(folder) -> dict:
    return json.loads((folder / "result.json").read_text())


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_first_step_loss_and_gradient_equal_tensorflow(runs):
    tf_loss, jax_loss = result(runs["tensorflow"])["step"]["loss"], result(runs["jax"])["step"]["loss"]
    assert abs(jax_loss - tf_loss) <= 1e-5 * abs(tf_loss)
    gradient_tf, gradient_jax = (np.load(runs[b] / "gradient.npy") for b in ("tensorflow", "jax"))
    assert np.abs(gradient_tf).max() > 0
    assert relative(gradient_jax, gradient_tf) <= 1e-5


def test_twenty_steps_learn_the_vectors_tensorflow_learns(runs):
    tf_vectors, jax_vectors = (np.load(runs[b] / "vectors-a.npy") for b in ("tensorflow", "jax"))
    assert relative(jax_vectors, tf_vectors) <= 1e-3
    _, tf_at_10, _ = load_diffusers_embedding(runs["tensorflow"] / "a" / "learned_embeds-steps-10.safetensors")
    assert relative(tf_vectors, tf_at_10) > 1e-3  # still moving after step 10 (measured 0.24)


def test_same_config_twice_and_resume_are_bitwise_equal_on_jax(runs):
    a, b, resumed = (np.load(runs["jax"] / f"vectors-{n}.npy") for n in ("a", "b", "resumed"))
    assert a.tobytes() == b.tobytes()
    assert result(runs["jax"])["train"]["resumed_from_step"] == 10
    assert resumed.tobytes() == a.tobytes()
    # The validation loss too (JSON floats of float32 values: equal means the same bits).
    validation = result(runs["jax"])["train"]["validation"]
    assert validation["a"]["step"] == [5, 10, 15, 20]
    assert validation["a"] == validation["b"] == validation["resumed"]


def test_validation_loss_equals_tensorflow(runs):
    tf_loss, jax_loss = (np.array(result(runs[b])["train"]["validation"]["a"]["loss"]) for b in ("tensorflow", "jax"))
    assert np.all(np.isfinite(tf_loss)) and len(set(tf_loss.tolist())) == 4  # it moves with the vectors
    np.testing.assert_allclose(jax_loss, tf_loss, rtol=1e-5)  # measured: 6e-7


def test_only_the_learned_vectors_change_on_jax(runs):
    frozen = result(runs["jax"])["frozen"]
    assert frozen["changed"] == ["text_encoder/token_embedding/learned_vectors"]
    assert frozen["trainable"] == ["text_encoder/token_embedding/learned_vectors"]


def test_render_equals_tensorflow(runs):
    tf_images, jax_images = (np.load(runs[b] / "render.npy") for b in ("tensorflow", "jax"))
    assert tf_images.shape == (2, 64, 64, 3) and tf_images.std() > 0.05
    assert np.abs(jax_images - tf_images).max() <= 1e-3 * 2  # the image range is [-1, 1]


def test_step_and_render_import_no_tensorflow(runs, tmp_path):
    assert result(runs["jax"])["modules"] == []
    done = run_backend("jax", tmp_path / "a", "--no-tensorflow")  # as on a GPU machine without TensorFlow
    assert "No module named 'tensorflow'" not in done.stderr
    assert np.load(tmp_path / "a" / "gradient.npy").shape == (1, 64)

    # scripts/gpu_check.py, which compares such a run made on a GPU with one made here: this run as "a" and the
    # module's JAX run (TensorFlow importable) as "b" are the same program on the same CPU, so the same bits
    shutil.copytree(runs["jax"], tmp_path / "b", ignore=shutil.ignore_patterns("runs", "vectors-*"))
    with tarfile.open(tmp_path / "tiny-gpu.tar", "w") as tar:
        for name in ("a", "b"):
            tar.add(tmp_path / name, arcname=name)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gpu_check import compare
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    a, b = compare(tmp_path / "tiny-gpu.tar", runs["tensorflow"])  # against TensorFlow: within the backends' 1e-5
    assert (a["run"], b["run"]) == ("a", "b") and b["bitwise_equal_to_a"] is True
    assert a["loss_rel"] <= 1e-5
    assert a["gradient_rel"] <= 1e-5 and a["render_max_abs"] <= 2e-3


def test_benchmark_counts_flops_without_running_on_jax(tmp_path):
    """--flops-only (how docs/gpu.md counts the FLOPs a GPU's compiled program hides): XLA's count of the lowered
    programs, which scales with the batch, is about twice the forward, and adds up for sampling."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "flops.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "model=tiny_random",
                           "--batch-sizes", "1,4", "--sample-steps", "10", "--flops-only", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counted = json.loads(out.read_text())
    one, four = (counted["training_flops_by_batch"][b] for b in ("1", "4"))
    assert 3.5 <= four["flops_per_step"] / one["flops_per_step"] <= 4.5
    assert 1.8 <= one["step_over_forward"] <= 2.2
    assert "lowered program" in one["flops_method"]
    sampling = counted["sampling_flops"]
    assert sampling["flops_per_image"] == 10 * sampling["unet_call_flops"] + sampling["decode_flops"] > 0
    assert "matmul_peak" not in counted and "training" not in counted  # nothing ran


def test_determinism_asks_xla_for_deterministic_gpu_ops_once():
    code = ("import os; from finetune.backends import enable_determinism; enable_determinism(); enable_determinism(); "
            "print(os.environ['XLA_FLAGS'])")
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["--xla_force_host_platform_device_count=1", "--xla_gpu_deterministic_ops=true"]


def test_train_command_on_jax_with_early_stopping(tmp_path):
    """The CLI on JAX, stopped early: the cooldown's start, set between two compiled steps, reaches them."""
    from finetune.config import TrainerConfig
    from finetune.training.schedules import WarmupDecay
    from finetune.training.validation import should_stop

    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "finetune.train", f"hydra.run.dir={run_dir}", "trainer.max_steps=12", "trainer.batch_size=2",
         "eval.images_per_prompt=1", "eval.num_steps=3", 'eval.prompts=["a photo of {}"]', "eval.preview_every=0",
         "trainer.validation.every=1", "trainer.early_stopping=true", "trainer.early_stopping_window=2",
         "trainer.early_stopping_threshold=1", "trainer.early_stopping_patience=1", "trainer.early_stopping_cooldown=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    decided = next(n for n in range(1, 13) if should_stop(metrics["validation_history"]["loss"][:n], 2, 1.0, 1))
    assert metrics["early_stopping_decided_at"] == decided and metrics["stop_reason"] == "early_stopping"
    assert metrics["steps"] == decided + 2 < 12 and np.isfinite(metrics["final_loss"])
    t = TrainerConfig()  # the default rate and schedule
    schedule = WarmupDecay(t.learning_rate, 12, t.warmup_steps, t.lr_schedule)
    expected = [float(schedule(u)) * min(1.0, (decided + 2 - u) / 2) for u in range(decided + 2)]
    np.testing.assert_allclose(metrics["loss_history"]["lr"], expected, rtol=1e-6)
    assert (run_dir / "samples" / "grid.png").stat().st_size > 0 and (run_dir / "report.html").is_file()


TWO_DEVICES = """
import json, sys
from finetune.config import compose_config
from finetune.export.diffusers_format import load_diffusers_embedding
from finetune.training.run import train
out, concept, *overrides = sys.argv[1:]
result = {}
for strategy in ("default", "mirrored"):
    metrics = train(compose_config("train", [*overrides, f"data.concept_dir={concept}", f"trainer.strategy={strategy}"]),
                    f"{out}/{strategy}")
    result[strategy] = {"replicas": metrics["replicas"], "loss": metrics["loss_history"]["loss"],
                        "vectors": load_diffusers_embedding(f"{out}/{strategy}/learned_embeds.safetensors")[1].tolist()}
print("RESULT " + json.dumps(result))
"""


def test_mirrored_on_two_jax_cpu_devices_equals_one_device(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    overrides = ["model=tiny_random", "eval.enabled=false", "trainer.checkpoint_every=0", "trainer.max_steps=3",
                 "trainer.batch_size=4", "trainer.max_grad_norm=0.001", "trainer.weight_decay=0.01",
                 "trainer.learning_rate=0.05", "token.num_vectors=2"]
    done = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(tmp_path), str(CONCEPT), *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    one, two = out["default"], out["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    single, mirrored = np.array(one["vectors"]), np.array(two["vectors"])
    assert np.abs(mirrored - single).max() <= 5e-5 * np.abs(single).max()


def test_a_refused_cudnn_attention_is_one_line_not_a_traceback_per_layer():
    """What Keras logs (absl) each time JAX refuses cuDNN's flash attention for a shape, as seen on an H100."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); import finetune.backends.jax_backend\n"
            "from absl import logging as absl_logging\n"
            "for _ in range(3):\n"
            "    try:\n"
            "        raise NotImplementedError('Unsupported sequence length Q 4096, KV 77.')\n"
            "    except NotImplementedError:\n"
            "        absl_logging.exception('Failed to apply cudnn implementation of jax.nn.dot_product_attention.')\n"
            "absl_logging.error('another absl error')")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Failed to apply" not in done.stderr
    assert done.stderr.count("cuDNN flash attention refused (Unsupported sequence length Q 4096, KV 77.)") == 1
    assert "another absl error" in done.stderr
