"""The JAX benchmark's profile (finetune/benchmarks/speed_jax.py, `scripts/benchmark.py --profile`): reading a
Perfetto trace, the real one of an H100 training step (an excerpt of docs/gpu.md's profile run) and a CPU run's,
and `--flops-from`, which takes the FLOPs a CPU counted for a GPU run."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("jax")
from finetune.benchmarks.speed_jax import busy_seconds, category, device_ops, op_time_summary  # noqa: E402

H100_STEP = ROOT / "tests" / "fixtures" / "h100_train_step_trace.json.gz"  # one batch-8 SD v1 step, 2026-11-27


def test_op_categories_follow_xla_and_library_names():
    assert category("command_buffer_1", "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16") == "attention (cuDNN fused)"
    assert category("cudnn-conv-bw-input.3", "sm90_xmma_dgrad_implicit_gemm_bf16bf16") == "convolution"
    assert category("command_buffer_7", "nvjet_sm90_tst_128x160_64x5_2x1_v_bz_TNT") == "matmul"
    assert category("gemm_fusion_dot.12") == "matmul"
    assert category("loop_convert_multiply_fusion") == "elementwise fusion"  # "convert" is no convolution
    assert category("input_reduce_fusion.2") == "reduction fusion (norms, softmax, sums)"
    assert category("wrapped_transpose.21") == "copy, transpose, slice"
    assert category("MemcpyH2D") == "copy, transpose, slice"
    assert category("while.3") == "other"


def test_busy_time_counts_overlapping_ops_once():
    ops = [{"start": 0.0, "seconds": 2.0}, {"start": 1.0, "seconds": 2.0}, {"start": 5.0, "seconds": 1.0},
           {"start": 5.2, "seconds": 0.1}]
    assert busy_seconds(ops) == pytest.approx(4.0)
    assert busy_seconds([]) == 0.0


def test_an_h100_trace_gives_the_kernels_of_its_streams_only():
    trace = json.loads(gzip.decompress(H100_STEP.read_bytes()))
    on_gpu = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["pid"] == 1]
    on_host = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["pid"] != 1]
    assert on_host, "the excerpt keeps host events, which are no device ops"
    ops, where = device_ops(trace)
    assert where == "gpu" and len(ops) == len(on_gpu) == 2665
    summary = op_time_summary(ops, wall=0.049, calls=1)
    assert summary["streams"] == ["Stream #14(Compute,MemcpyD2D,Memset)"]
    assert summary["op_seconds_total"] == pytest.approx(sum(e["dur"] for e in on_gpu) * 1e-6)
    assert 0.045 <= summary["op_seconds_per_call"] <= 0.049  # docs/gpu.md: 49 ms of GPU time per step
    shares = {c["op"]: c["share"] for c in summary["by_category"]}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    for name in ("convolution", "attention (cuDNN fused)", "matmul", "elementwise fusion"):
        assert 0.15 <= shares[name] <= 0.3, (name, shares)
    assert summary["top_kernels"][0]["op"].startswith("cudnn_generated_fort_native_sdpa_sm90_flash_bprop")


def test_a_gpu_trace_skips_the_lines_that_repeat_its_kernels():
    """A GPU's "XLA Ops" / "XLA Modules" lines (TensorBoard's views) hold the same time again, per op or module."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
            {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}}]
    kernels = [{"ph": "X", "pid": 1, "tid": 7, "ts": 0.0, "dur": 30.0, "name": "nvjet_x", "args": {"hlo_op": "dot.1"}},
               {"ph": "X", "pid": 1, "tid": 7, "ts": 40.0, "dur": 10.0, "name": "loop_add_fusion"}]
    repeats = [{"ph": "X", "pid": 1, "tid": 8, "ts": 0.0, "dur": 30.0, "name": "dot.1"},
               {"ph": "X", "pid": 2, "tid": 3, "ts": 0.0, "dur": 50.0, "name": "dot.1", "args": {"hlo_op": "dot.1"}}]
    ops, where = device_ops({"traceEvents": meta + kernels + repeats})
    assert where == "gpu" and [(o["hlo_op"], o["kernel"]) for o in ops] == [("dot.1", "nvjet_x"),
                                                                          ("loop_add_fusion", "loop_add_fusion")]
    summary = op_time_summary(ops, wall=100e-6, calls=1)
    assert summary["device_busy_share"] == pytest.approx(0.4)
    assert [(c["op"], c["share"]) for c in summary["by_category"]] == [("matmul", 0.75), ("elementwise fusion", 0.25)]


def counted_config(**changes) -> dict:
    """A --flops-only JSON for model=tiny_random at batch 2, with made-up counts."""
    config = {"preset": "tiny", "resolution": 64, "precision": "float32", "frozen_dtype": None, "num_vectors": 1,
              **changes}
    step = {"flops_per_step": 123_000_000_000, "flops_method": "made up", "flops_by_op_type": None,
            "unet_forward_flops": 50_000_000_000, "text_encoder_forward_flops": 10_000_000_000, "step_over_forward": 2.05,
            "weight_gradients": None}  # the keys of scripts/benchmark.py's training_flops
    return {"config": config, "training_flops_by_batch": {"2": step},
            "sampling_flops": {"unet_call_flops": 10, "decode_flops": 5, "flops_per_image": 3 * 10 + 5}}


def test_a_profiled_run_takes_its_flops_from_a_count_made_elsewhere(tmp_path):
    """What docs/gpu.md runs on a GPU, on the tiny model here: FLOPs from a --flops-only JSON (here made up, so
    that they can only have come from it), the step under JAX's profiler."""
    counted = tmp_path / "flops.json"
    counted.write_text(json.dumps(counted_config()))
    out = tmp_path / "run.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "model=tiny_random", "--batch-sizes",
                           "2", "--steps", "2", "--warmup", "1", "--no-sampling", "--profile", "--profile-dir",
                           str(tmp_path / "profile"), "--flops-from", str(counted), "--matmul-size", "64", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["training"]["flops_per_step"] == 123_000_000_000 and result["flops_from"] == str(counted)
    assert result["training"]["achieved_gflops"] == pytest.approx(123 / result["training"]["median_step_s"])
    profile = result["profile"]["train_step"]
    assert profile["where"] == "host" and profile["calls"] == 5 and profile["ops"] > 5 * 100
    assert sum(c["share"] for c in profile["by_category"]) == pytest.approx(1.0, abs=1e-3)
    assert list((tmp_path / "profile" / "train").glob("plugins/profile/*/perfetto_trace.json.gz"))
    assert "by category" in done.stdout


@pytest.mark.parametrize("args, changes, message", [
    ([], {"resolution": 32}, "counted another config (resolution 32, here 64)"),
    (["--batch-sizes", "4"], {}, "has no count for batch size(s) [4]"),
    (["--sample-steps", "50"], {}, "counted sampling for other steps or images"),
    ([], None, None),
])
def test_a_count_of_another_config_is_refused_before_anything_runs(tmp_path, args, changes, message):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from benchmark import counted_elsewhere, parse_args
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    counted = tmp_path / "flops.json"
    counted.write_text(json.dumps(counted_config(**(changes or {}))))
    ours = {"config": {"preset": "tiny", "resolution": 64, "precision": "float32", "frozen_dtype": None,
                       "num_vectors": 1, "batch_size": 2}}
    arguments = parse_args(["--sample-steps", "3", *args, "--flops-from", str(counted)])
    if message is None:  # the same config: its counts
        assert counted_elsewhere(arguments, ours)["training"]["2"]["flops_per_step"] == 123_000_000_000
        return
    with pytest.raises(SystemExit, match=re.escape(message)):
        counted_elsewhere(arguments, ours)
