"""Every release preset builds (on the meta device) exactly the tensors of its released checkpoint.

The manifests in tests/manifests list every tensor name and shape of every released
architecture (tests/manifests). A preset's Engine must have the same keys and shapes; the
only allowed difference is a key the preset declares `optional` (e.g. `denoiser.sigmas`).
"""

from __future__ import annotations

import json

import pytest
import torch

from gm import presets
from gm.models.build import build_engine, validate
from tests.conftest import MANIFESTS  # noqa: I001

# preset -> manifest (Turbo models share the base architectures)
MANIFEST_OF = {
    "sdxl-base-1.0": "sdxl-base", "sdxl-base-0.9": "sdxl-base", "sdxl-turbo": "sdxl-base",
    "sdxl-refiner-1.0": "sdxl-refiner", "sdxl-refiner-0.9": "sdxl-refiner",
    "sd-2.1": "sd-2.1", "sd-turbo": "sd-2.1", "sd-2.1-768": "sd-2.1-768",
    "svd": "svd", "svd-xt": "svd-xt", "svd-xt-1.1": "svd-xt-1.1",
    "svd-image-decoder": "svd-image-decoder", "svd-xt-image-decoder": "svd-xt-image-decoder",
    "sv3d-u": "sv3d-u", "sv3d-p": "sv3d-p",
    "sv4d": "sv4d", "sv4d2": "sv4d2", "sv4d2-8views": "sv4d2-8views",
}
SHIPPED = set(presets.available())


@pytest.mark.parametrize("name", sorted(MANIFEST_OF))
def test_preset_matches_manifest(name: str) -> None:
    assert name in SHIPPED, f"presets/{name}.toml is missing"
    preset = presets.load(name)
    validate(preset)
    manifest = json.loads((MANIFESTS / f"{MANIFEST_OF[name]}.json").read_text())
    with torch.device("meta"):
        engine = build_engine(preset)
    built = {k: tuple(v.shape) for k, v in engine.state_dict().items()}
    released = {k: tuple(v) for k, v in manifest["tensors"].items()}
    assert preset.checkpoint is not None
    optional = set(preset.checkpoint.optional)
    missing = sorted(set(released) - set(built) - optional)
    extra = sorted(set(built) - set(released))
    shapes = sorted(k for k in set(built) & set(released) if built[k] != released[k])
    assert not missing, f"{name}: {len(missing)} released tensors not built, e.g. {missing[:5]}"
    assert not extra, f"{name}: {len(extra)} built tensors not in the release, e.g. {extra[:5]}"
    assert not shapes, f"{name}: wrong shapes, e.g. {[(k, built[k], released[k]) for k in shapes[:5]]}"
    params = sum(v.numel() for k, v in engine.state_dict().items() if k not in manifest.get("persistent_buffers", {}))
    assert params == manifest["param_count"], f"{name}: {params} parameters, release has {manifest['param_count']}"


def test_every_shipped_inference_preset_has_a_manifest() -> None:
    inference = {n for n in SHIPPED if presets.load(n).family != "train"}
    assert inference <= set(MANIFEST_OF), sorted(inference - set(MANIFEST_OF))
