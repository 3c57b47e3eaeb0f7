"""Reading what an offline W&B run left on disk, without a W&B server.

`run-<id>.wandb` is W&B's transaction log: a 7-byte header (":W&B", magic, version), then
LevelDB-log framed chunks (crc32c:4, length:2, type:1 + data, in 32 KiB blocks; types
FULL=1, FIRST=2, MIDDLE=3, LAST=4) whose payloads are `wandb_internal_pb2.Record` protos,
the same records `wandb sync` uploads.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK_SIZE = 32 * 1024
FILE_HEADER_SIZE = 7
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = FILE_HEADER_SIZE, b""
    while pos + CHUNK_HEADER_SIZE <= len(data):
        if BLOCK_SIZE - pos % BLOCK_SIZE < CHUNK_HEADER_SIZE:  # block trailer: zero padding
            pos += BLOCK_SIZE - pos % BLOCK_SIZE
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER_SIZE])
        chunk = data[pos + CHUNK_HEADER_SIZE : pos + CHUNK_HEADER_SIZE + length]
        pos += CHUNK_HEADER_SIZE + length
        if kind == 0:  # preallocated, unwritten space
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class OfflineRun:
    """The run record, history rows, summary and artifacts of one offline-run-* folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        (log_file,) = self.folder.glob("run-*.wandb")
        self.run, self.history, self.summary, self.artifacts = None, [], {}, []
        for record in records(log_file):
            kind = record.WhichOneof("record_type")
            if kind == "run" and self.run is None:
                self.run = record.run
            elif kind == "history":
                self.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    self.summary[_key(item)] = json.loads(item.value_json)
            elif kind == "artifact":
                self.artifacts.append(record.artifact)

    @property
    def config(self) -> dict:
        return {item.key: json.loads(item.value_json) for item in self.run.config.update}

    def series(self, key: str) -> dict[int, object]:
        """{step: value} of one history key."""
        return {row["_step"]: row[key] for row in self.history if key in row}

    def model_artifacts(self) -> list:
        return [a for a in self.artifacts if a.type == "model"]

    def media_images(self) -> list[Path]:
        return sorted((self.folder / "files" / "media" / "images").rglob("*.png"))
