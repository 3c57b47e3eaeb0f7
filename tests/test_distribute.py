"""Several replicas learn the vectors a one-device run learns from the same global batch.

trainer.strategy=mirrored: the CPU is split into two logical devices before TensorFlow
initializes its devices, so the runs happen in a fresh Python process.
trainer.strategy=multi_worker_mirrored: two local worker processes form the cluster.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import CONCEPT, ROOT

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from finetune.config import compose_config
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.training.run import train

    out_dir, concept, *overrides = sys.argv[1:]
    result = {}
    for strategy in ("default", "mirrored"):
        cfg = compose_config("train", [*overrides, f"data.concept_dir={concept}", f"trainer.strategy={strategy}"])
        metrics = train(cfg, f"{out_dir}/{strategy}")
        _, vectors, _ = load_diffusers_embedding(f"{out_dir}/{strategy}/learned_embeds.safetensors")
        result[strategy] = {"replicas": metrics["replicas"], "vectors": vectors.tolist(),
                            "initial_norms": metrics["initial_vector_norms"],
                            "cosine_to_init": metrics["embedding_history"]["cosine_to_init"][-1]}
    print("RESULT " + json.dumps(result))
    """
)


# 3 steps of a global batch of 4; clipping and weight decay act on the global gradient, as on one device.
OVERRIDES = [
    "model=tiny_random", "eval.enabled=false", "trainer.checkpoint_every=0", "trainer.max_steps=3",
    "trainer.batch_size=4", "trainer.max_grad_norm=0.001",
    "trainer.weight_decay=0.01", "trainer.learning_rate=0.05", "token.num_vectors=2",
]


def test_mirrored_on_two_cpu_devices_equals_one_device(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(CONCEPT), *OVERRIDES], cwd=ROOT,
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
    assert max(one["cosine_to_init"]) < 0.9999, one["cosine_to_init"]
    # The default token.norm=vocabulary holds both runs' vectors at their start norm (the constraint on replicas).
    np.testing.assert_allclose(np.linalg.norm(mirrored, axis=1), two["initial_norms"], rtol=0, atol=1e-4)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_on_two_local_processes_equals_one_device(tmp_path):
    """Two `python -m finetune.train` processes on this host form a MultiWorkerMirroredStrategy cluster
    (TF_CONFIG), each with one replica and half of every global batch, and learn the one-device vectors."""
    from finetune.config import compose_config
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.training.run import train

    overrides = [*OVERRIDES, f"data.concept_dir={CONCEPT}"]
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    run_dir = tmp_path / "multi_worker"  # both workers get the same run folder, as on a shared filesystem
    # Each worker's output goes to a file: read through pipes one worker after the other, a full
    # pipe would stall the other worker, and with it the first one at the next all-reduce.
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    handles = [log.open("w") for log in logs]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "finetune.train", *overrides, "trainer.strategy=multi_worker_mirrored",
             f"hydra.run.dir={run_dir}"],
            cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i, handle in enumerate(handles)
    ]
    try:
        for w in workers:
            w.wait(timeout=900)
    finally:
        for w, handle in zip(workers, handles):
            w.kill()
            handle.close()
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log.read_text()[-3000:]

    one = train(compose_config("train", overrides), tmp_path / "one_device")
    _, single, _ = load_diffusers_embedding(tmp_path / "one_device" / "learned_embeds.safetensors")
    for folder in (run_dir, run_dir / "worker-1"):  # the chief's outputs, and the other worker's
        metrics = json.loads((folder / "metrics.json").read_text())
        assert (one["replicas"], metrics["replicas"]) == (1, 2)
        _, vectors, _ = load_diffusers_embedding(folder / "learned_embeds.safetensors")
        assert np.abs(single - vectors).max() <= 5e-5 * np.abs(single).max()  # tolerance: see the test above
        # The logged loss is the global batch's, as on one device (each worker computed half of it).
        np.testing.assert_allclose(metrics["loss_history"]["loss"], one["loss_history"]["loss"], rtol=1e-5)
    assert max(one["embedding_history"]["cosine_to_init"][-1]) < 0.9999  # the vectors moved


def test_multi_worker_strategy_without_tf_config_is_a_clear_error(monkeypatch):
    from finetune.errors import ConfigError
    from finetune.training.distribute import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="multi_worker_mirrored needs the TF_CONFIG environment variable"):
        make_strategy("multi_worker_mirrored")
    monkeypatch.setenv("TF_CONFIG", '{"task": {"index": 0}}')
    with pytest.raises(ConfigError, match="TF_CONFIG is not a JSON object with cluster.worker"):
        make_strategy("multi_worker_mirrored")
