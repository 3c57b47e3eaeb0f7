"""Experiment tracking: W&B (offline, online without network), TensorBoard, the guard, the per-step stats."""

import base64
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.errors import ConfigError
from finetune.reporting.progress import preview_image
from finetune.tracking import make_tracker
from finetune.tracking.base import GuardedTracker, Tracker
from finetune.training.callbacks import embedding_stats, preview_path
from tests.conftest import CONCEPT, PLACEHOLDER, compose_train
from tests.tracked_runs import PREVIEW_STEPS, TRACKED, shared_data_dir, tensorboard_run, wandb_run
from tests.wandb_files import OfflineRun


@pytest.fixture(scope="module")
def wandb_offline(tmp_path_factory):
    run_dir, metrics = wandb_run(tmp_path_factory)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return run_dir, metrics, OfflineRun(folder)


def test_wandb_run_has_config_name_and_tags(wandb_offline):
    run_dir, _, run = wandb_offline
    assert run.run.display_name == f"{CONCEPT.name}-{run_dir.name}"
    assert set(run.run.tags) == {CONCEPT.name, "tiny", PLACEHOLDER}
    assert run.config["trainer"]["max_steps"] == 4 and run.config["logger"]["mode"] == "offline"


def test_wandb_summary_holds_the_final_metrics(wandb_offline):
    _, metrics, run = wandb_offline
    for key in ("final_loss", "mean_loss_last_10", "steps", "train_seconds", "vocabulary_mean_norm"):
        assert run.summary[key] == pytest.approx(metrics[key]), key
    assert run.summary["learned_vector_norms"] == pytest.approx(metrics["learned_vector_norms"])
    assert "loss_history" not in run.summary  # per-step series live in the history, not the summary


def test_wandb_history_has_loss_lr_grad_norm_and_embedding_stats(wandb_offline):
    _, metrics, run = wandb_offline
    steps = metrics["loss_history"]["step"]
    assert run.series("train/loss") == pytest.approx(dict(zip(steps, metrics["loss_history"]["loss"])))
    assert run.series("train/lr") == pytest.approx(dict(zip(steps, metrics["loss_history"]["lr"])))
    grad_norms = run.series("train/grad_norm")
    assert sorted(grad_norms) == steps and all(np.isfinite(g) and g > 0 for g in grad_norms.values())
    norms = run.series("embedding/norm_0")
    assert norms[4] == pytest.approx(metrics["learned_vector_norms"][0], rel=1e-5)
    cosines = run.series("embedding/cosine_to_init_0")
    assert all(-1.0 <= c <= 1.0 for c in cosines.values()) and cosines[4] < 1.0  # the vector moved
    validation, scores = metrics["validation_history"], metrics["score_history"]
    assert run.series("validation/loss") == pytest.approx(dict(zip(validation["step"], validation["loss"])))
    assert validation["step"] == scores["step"] == [2, 4]
    # tiny_random: no judge; the toy world's checker scores "a photo of {}" (no edit prompt here)
    assert run.series("score/attribute_score") == pytest.approx(dict(zip(scores["step"], scores["attribute_score"])))
    assert set(scores) == {"step", "attribute_score"}


def test_wandb_media_holds_the_previews(wandb_offline):
    run_dir, _, run = wandb_offline
    previews = [p for p in run.media_images() if p.parent.name == "previews"]
    assert len(previews) == len(PREVIEW_STEPS)
    logged = sorted(np.asarray(Image.open(p).convert("RGB")).tobytes() for p in previews)
    # The same pixels as samples/previews/step-N.png (upscaled 4x there, with a label band).
    on_disk = sorted(preview_image(preview_path(run_dir, s))[::4, ::4].tobytes() for s in PREVIEW_STEPS)
    assert logged == on_disk
    captions = [row["previews/image/caption"] for row in run.history if "previews/image/caption" in row]
    assert captions == [f"step {s}: a photo of {PLACEHOLDER} (seed 0)" for s in PREVIEW_STEPS]
    assert any(p.parent.name == "samples" for p in run.media_images())  # final/samples/grid


def test_wandb_preview_table_grows_over_the_run(wandb_offline):
    _, _, run = wandb_offline
    increments = [a for a in run.artifacts if "incr" in a.type]
    rows = []
    for artifact in increments:
        (table,) = [c for c in artifact.manifest.contents if c.path.endswith(".table.json")]
        content = json.loads(open(table.local_path).read())
        assert content["columns"] == ["step", "prompt", "seed", "image"]
        rows += [row[:3] for row in content["data"]]
        images = {c.path for c in artifact.manifest.contents}
        for step, _, _, image in content["data"]:
            assert image["path"] in images and image["caption"].startswith(f"step {step}:")
    assert rows == [[s, f"a photo of {PLACEHOLDER}", 0] for s in PREVIEW_STEPS]


def _md5(path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_wandb_artifacts_hold_the_embedding_files(wandb_offline):
    run_dir, _, run = wandb_offline
    everything = run.model_artifacts()
    best = [a for a in everything if "best" in a.aliases]  # learned_embeds-best.safetensors as it improved
    artifacts = [a for a in everything if "best" not in a.aliases]
    assert all(sorted(a.aliases) == ["best", "latest"] for a in best)  # W&B adds latest to every version
    assert [sorted(a.aliases) for a in artifacts] == [
        ["latest", "step-2"], ["latest", "step-4"], ["final", "latest", "step-4"]]
    assert best and best[-1].manifest.contents[0].digest == _md5(run_dir / "learned_embeds-best.safetensors")
    snapshots = [run_dir / "learned_embeds-steps-2.safetensors", run_dir / "learned_embeds-steps-4.safetensors"]
    for artifact, path in zip(artifacts, snapshots):
        (entry,) = artifact.manifest.contents
        assert entry.path == "learned_embeds.safetensors" and entry.digest == _md5(path)
    for artifact in artifacts:
        assert artifact.name == "embedding-red-checkered-heart" and json.loads(artifact.metadata)["placeholder"] == PLACEHOLDER
    # The final artifact: the diffusers file and every exported format.
    final = {entry.path: entry.digest for entry in artifacts[-1].manifest.contents}
    assert final == {
        "learned_embeds.safetensors": _md5(run_dir / "learned_embeds.safetensors"),
        "export/a1111_safetensors/red-checkered-heart.safetensors":
            _md5(run_dir / "export" / "a1111_safetensors" / "red-checkered-heart.safetensors"),
        "export/kohya/red-checkered-heart.safetensors": _md5(run_dir / "export" / "kohya" / "red-checkered-heart.safetensors"),
    }
    assert json.loads(artifacts[-1].metadata)["formats"] == ["diffusers", "a1111_safetensors", "kohya"]


def test_wandb_run_folder_holds_every_file_an_upload_needs(wandb_offline, tmp_path):
    """Every file the offline run's records point at (artifact files as W&B staged them, media, the
    run's files) lies inside the run folder: copied elsewhere, the copy holds all of them."""
    import shutil

    run_dir, _, run = wandb_offline
    local_paths = [Path(entry.local_path) for artifact in run.artifacts for entry in artifact.manifest.contents
                   if entry.local_path]
    assert len(local_paths) >= 3 + 2  # 3 model artifacts (5 files) + the preview table's increments
    outside = [p for p in local_paths if not p.resolve().is_relative_to(run_dir.resolve())]
    assert not outside, f"W&B staged files outside the run folder: {outside[:3]}"
    copy = tmp_path / "copied-run"
    shutil.copytree(run_dir, copy)
    for path in local_paths:
        moved = copy / path.resolve().relative_to(run_dir.resolve())
        assert moved.is_file() and moved.read_bytes() == path.read_bytes(), moved


def test_wandb_gets_the_final_metrics_as_scalars(wandb_offline):
    _, metrics, run = wandb_offline
    final_step = metrics["steps"]
    quality = metrics["quality"]["all"]
    assert quality["attribute_score"] is not None
    expected = {"final/final_loss": metrics["final_loss"], "final/mean_loss_last_10": metrics["mean_loss_last_10"],
                "quality/all/attribute_score": quality["attribute_score"],
                "quality/all/attributes/shape": quality["attributes"]["shape"]}
    for key, value in expected.items():
        assert run.series(key) == {final_step: pytest.approx(value)}, key
        assert run.summary[key] == pytest.approx(value), key


def test_wandb_online_without_network_falls_back_offline(tmp_path, tmp_path_factory, monkeypatch, caplog):
    from finetune.training.run import train

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no network, for sure
    cfg = compose_train(*TRACKED, "eval.enabled=false", "trainer.max_steps=1", "trainer.checkpoint_every=0",
                        "logger=wandb", "logger.init_timeout=3", shared_data_dir(tmp_path_factory))
    assert cfg.logger.mode == "online"
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg, tmp_path)
    assert any("could not start online" in r.getMessage() for r in caplog.records)
    for name in ("learned_embeds.safetensors", "metrics.json", "report.html", "loss.png"):
        assert (tmp_path / name).is_file(), name
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert OfflineRun(folder).summary["final_loss"] == pytest.approx(metrics["final_loss"])


@pytest.fixture(scope="module")
def tensorboard_events(tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = tensorboard_run(tmp_path_factory)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return metrics, events


def _tensor_values(events, tag):
    import tensorflow as tf

    return {e.step: tf.make_ndarray(e.tensor_proto) for e in events.Tensors(tag)}


def test_tensorboard_events_hold_the_scalars(tensorboard_events):
    metrics, events = tensorboard_events
    history = metrics["loss_history"]
    loss = _tensor_values(events, "train/loss")
    assert {s: float(v) for s, v in loss.items()} == pytest.approx(dict(zip(history["step"], history["loss"])))
    for tag in ("train/lr", "train/grad_norm", "embedding/norm_0", "embedding/cosine_to_init_0"):
        assert sorted(_tensor_values(events, tag)) == history["step"], tag
    assert float(_tensor_values(events, "final/final_loss")[4]) == pytest.approx(metrics["final_loss"])


def test_tensorboard_events_hold_the_quality_scalars_and_hparams(tensorboard_events):
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics, events = tensorboard_events
    quality = metrics["quality"]["all"]
    for tag, value in {"quality/all/attribute_score": quality["attribute_score"],
                       "quality/all/attributes/color": quality["attributes"]["color"],
                       "final/mean_loss_last_10": metrics["mean_loss_last_10"],
                       "final/learned_vector_norms/0": metrics["learned_vector_norms"][0]}.items():
        assert {s: float(v) for s, v in _tensor_values(events, tag).items()} == {4: pytest.approx(value)}, tag

    def plugin_data(tag):
        data = plugin_data_pb2.HParamsPluginData()
        data.ParseFromString(events.SummaryMetadata(tag).plugin_data.content)
        return data

    session = plugin_data("_hparams_/session_start_info").session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in session.hparams.items()}
    assert hparams["trainer.learning_rate"] == pytest.approx(0.001)  # the run's override
    assert hparams["trainer.max_steps"] == 4 and hparams["token.num_vectors"] == 1
    assert hparams["token.initializer"] == "shape" and hparams["trainer.lr_schedule"] == "cosine"
    assert hparams["trainer.weight_decay"] == 0 and hparams["trainer.max_grad_norm"] == "None"
    experiment = plugin_data("_hparams_/experiment").experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"final/final_loss", "quality/all/attribute_score"} <= metric_tags
    assert {h.name for h in experiment.hparam_infos} == set(hparams)


def test_tensorboard_events_hold_the_previews(tensorboard_events):
    metrics, events = tensorboard_events
    previews = _tensor_values(events, "previews")
    assert sorted(previews) == PREVIEW_STEPS
    for value in previews.values():  # [width, height, PNG]
        width, height, png = value
        assert Image.open(io.BytesIO(png)).size == (int(width), int(height)) == (64, 64)
    captions = _tensor_values(events, "previews/caption")
    assert captions[2].item().decode() == f"step 2: a photo of {PLACEHOLDER} (seed 0)"
    assert "final/samples/grid" in events.Tags()["tensors"]


class _Broken(Tracker):
    def log_scalars(self, values, step):
        raise ConnectionError("quota exceeded")

    def finish(self, metrics, pictures):
        raise RuntimeError("server gone")


def test_guarded_tracker_turns_failures_into_one_warning_each(caplog):
    tracker = GuardedTracker(_Broken(), "wandb")
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            tracker.log_scalars({"train/loss": 1.0}, step)
        tracker.finish({}, {})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "log_scalars failed (ConnectionError: quota exceeded)" in warnings[0] and "server gone" in warnings[1]


def test_wandb_disabled_mode_logs_nothing_and_warns_nothing(tmp_path, caplog):
    from finetune.sampling.renderer import RenderedImage

    cfg = compose_train(*TRACKED, "logger=wandb", "logger.mode=disabled")
    embedding = tmp_path / "learned_embeds.safetensors"
    embedding.write_bytes(b"vectors")
    with caplog.at_level(logging.WARNING):
        tracker = make_tracker(cfg, tmp_path)
        tracker.log_scalars({"train/loss": 1.0}, 1)
        tracker.log_preview(RenderedImage("a photo of <concept>", 0, np.zeros((8, 8, 3), np.uint8)), 2)
        tracker.log_embedding(embedding, 2, {"placeholder": "<concept>"}, final=True)
        tracker.finish({"steps": 2, "final_loss": 0.5}, {})
    assert not caplog.records
    assert [p.name for p in tmp_path.iterdir()] == [embedding.name]


@pytest.mark.parametrize("override, message", [("logger.name=comet", "logger.name='comet'"),
                                               ("logger.mode=sometimes", "logger.mode='sometimes'")])
def test_unknown_logger_or_mode_is_a_config_error(tmp_path, override, message):
    cfg = compose_train(*TRACKED, "logger=wandb", override)
    with pytest.raises(ConfigError, match=message):
        make_tracker(cfg, tmp_path)


def test_embedding_stats():
    initial = np.array([[1.0, 0.0], [0.0, 2.0]])
    norms, cosines = embedding_stats(np.array([[3.0, 4.0], [0.0, -1.0]]), initial)
    assert norms == pytest.approx([5.0, 1.0]) and cosines == pytest.approx([0.6, -1.0])
