#!/usr/bin/env python
"""Renders the bundled concept from the toy world: a large red checkered heart on white.

    python scripts/make_concept.py                    # -> finetune/assets/concepts/red-checkered-heart/
    python scripts/make_concept.py --out /tmp/c --count 8 --seed 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from finetune.evaluation.scores import CONCEPT_FILE
from finetune.io import write_json_atomic
from finetune.toyworld.attributes import NEVER_NAMED
from finetune.toyworld.concept import ATTRIBUTES, NAME, ORACLE_PROMPT, concept_scenes
from finetune.toyworld.render import render

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "finetune" / "assets" / "concepts" / NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(concept_scenes(args.count, args.seed)):
        Image.fromarray(render(scene)).save(args.out / f"{NAME}-{i:02d}.png")
    # What the evaluation stage measures generated images against (finetune/evaluation/scores.py).
    write_json_atomic(args.out / CONCEPT_FILE, {
        "name": NAME,
        "toyworld_attributes": ATTRIBUTES,
        "never_named": sorted(a for a, v in ATTRIBUTES.items() if v in NEVER_NAMED.get(a, ())),
        "oracle_prompt": ORACLE_PROMPT,
    })
    print(f"wrote {args.count} images and {CONCEPT_FILE} to {args.out}")


if __name__ == "__main__":
    main()
