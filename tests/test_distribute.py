"""trainer.strategy=mirrored on 2 logical CPU devices learns the vectors a one-device run learns.

The CPU is split into two logical devices before TensorFlow initializes its devices, so the
runs happen in a fresh Python process.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import CONCEPT, ROOT

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras, numpy as np, tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from finetune.config import compose_config
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.training.run import train

    class Replicas(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.count = self.model.distribute_strategy.num_replicas_in_sync

    out_dir, concept, *overrides = sys.argv[1:]
    result = {}
    for strategy in ("default", "mirrored"):
        cfg = compose_config("train", [*overrides, f"data.concept_dir={concept}", f"trainer.strategy={strategy}"])
        replicas = Replicas()
        metrics = train(cfg, f"{out_dir}/{strategy}", extra_callbacks=[replicas])
        _, vectors, _ = load_diffusers_embedding(f"{out_dir}/{strategy}/learned_embeds.safetensors")
        result[strategy] = {"replicas": replicas.count, "vectors": vectors.tolist(),
                            "initial_norms": metrics["initial_vector_norms"]}
    print("RESULT " + json.dumps(result))
    """
)


def test_mirrored_on_two_cpu_devices_equals_one_device(tmp_path):
    # Clipping and weight decay act on the global gradient, as on one device.
    overrides = [
        "model=tiny_random", "eval.enabled=false", "trainer.checkpoint_every=0", "trainer.max_steps=3",
        "trainer.batch_size=4", "trainer.max_grad_norm=0.001",
        "trainer.weight_decay=0.01", "trainer.learning_rate=0.05", "token.num_vectors=2",
    ]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(CONCEPT), *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    one, two = result["default"], result["mirrored"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    single, mirrored = np.array(one["vectors"]), np.array(two["vectors"])
    # The vectors moved (3 clipped steps of lr 0.05), and both runs moved them the same way.
    # Float32 tolerance: the replicas sum the gradient in another order, and Adam's normalized
    # step turns a relative gradient difference e into an absolute vector difference ~lr * e.
    assert np.abs(single - mirrored).max() <= 5e-5 * np.abs(single).max()
    assert not np.allclose(np.linalg.norm(single, axis=1), one["initial_norms"], rtol=0, atol=1e-4)


def test_multi_worker_strategy_fails_before_any_work_with_a_clear_error():
    from finetune.config import compose_config
    from finetune.errors import ConfigError
    from finetune.training.distribute import make_strategy

    cfg = compose_config("train", ["trainer.strategy=multi_worker_mirrored"])
    with pytest.raises(ConfigError, match="multi_worker_mirrored does not work yet.*trainer.strategy=mirrored"):
        make_strategy(cfg.trainer.strategy)
