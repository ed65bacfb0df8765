"""gm: Stability AI's generative models on a compact PyTorch engine, as a command and a library.

    import gm
    m = gm.load("sdxl-base-1.0")          # a Model: loaded once, used for many calls
    images = m.txt2img("a fox", steps=30)  # PIL images; nothing written unless save=/out= is given

`import gm` stays light (no torch) until `gm.load` is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gm.api import Model

__all__ = ["load"]


def load(preset: str | Path | Any, *, checkpoint: str | Path | None = None, device: str = "auto",
         dtype: str | None = None, low_vram: bool | None = None, compile: bool | None = None,
         unsafe_pickle: bool = False, overrides: tuple[str, ...] = (), loras: Any = (),
         vae: str | Path | None = None, vae_tiling: str = "auto") -> Model:
    """Load a preset (name, .toml path or Preset) and its checkpoint into a `gm.model.Model`; `loras`
    (("file or name", scale) pairs) are merged and `vae` replaces its VAE; `vae_tiling` (auto, on,
    off; also `model.vae_tiling`) decides tiled VAE decode / encode."""
    from gm.api import Model

    return Model.load(str(preset) if isinstance(preset, Path) else preset, checkpoint=checkpoint, device=device,
                      dtype=dtype, low_vram=low_vram, compile=compile, unsafe_pickle=unsafe_pickle,
                      overrides=tuple(overrides), loras=loras, vae=vae, vae_tiling=vae_tiling)
