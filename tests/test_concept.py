"""The bundled concept: regenerable, and every image measures as the concept's attributes."""

import subprocess
import sys

import numpy as np
from PIL import Image

from finetune.toyworld import measure
from finetune.toyworld.attributes import NEVER_NAMED
from finetune.toyworld.concept import ATTRIBUTES, NAME
from tests.conftest import CONCEPT, ROOT


def test_bundled_concept_is_the_default_and_has_a_never_named_attribute():
    assert CONCEPT.name == NAME
    assert [a for a, v in ATTRIBUTES.items() if v in NEVER_NAMED.get(a, ())] == ["pattern"]


def test_every_bundled_image_measures_as_the_concept():
    files = sorted(CONCEPT.glob("*.png"))
    assert len(files) == 5
    for f in files:
        assert measure(np.array(Image.open(f).convert("RGB"))) == ATTRIBUTES, f


def test_script_regenerates_the_bundled_images_exactly(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_concept.py"), "--out", str(tmp_path)], check=True)
    for f in sorted(CONCEPT.glob("*.png")):
        assert np.array_equal(np.array(Image.open(f)), np.array(Image.open(tmp_path / f.name))), f.name
    assert (tmp_path / "concept.json").read_text() == (CONCEPT / "concept.json").read_text()


def test_concept_json_names_the_attributes_the_evaluation_measures():
    from finetune.evaluation.scores import concept_attributes

    assert concept_attributes(CONCEPT) == ATTRIBUTES
    assert concept_attributes(ROOT / "tests") is None  # no concept.json: no attribute score
