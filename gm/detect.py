"""Which release architecture a .safetensors file holds, from its header alone (no tensor data).

Fine-tunes and merges carry their parent's tensor names and shapes, so a handful of probes
separates the families gm runs: the conditioner's text encoders (CLIP-L + OpenCLIP bigG for SDXL
base, bigG alone for the refiner, OpenCLIP ViT-H for SD 2.x), the UNet's vector-conditioning
width (`label_emb`: 2816 SDXL base, 2560 refiner, 768 SVD, 256 SV3D_u, 1280 SV3D_p/SV4D), the
video decoder's temporal layers (SVD vs its image-decoder variant), and the SV4D 2.0 motion
mixers. Files whose architectures are identical (SDXL base 1.0 / 0.9 / Turbo, SD 2.1 512 /
768-v / Turbo, SVD / SVD-XT / SVD-XT 1.1, SV4D 2.0 / its 8-view model) are told apart only by
their file name; otherwise a stated default is assumed and the note says how to choose with -p.
The probes were taken from the release architectures' key manifests (tests/manifests), and
tests/test_detect.py checks every release preset against them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gm.errors import CheckpointError

Header = dict[str, tuple[str, tuple[int, ...]]]  # as gm.checkpoint.read_header returns it
ABSENT = None  # probe: the key must not be there
ANY = ()  # probe: the key must be there, any shape

UNET = "model.diffusion_model."
EMB = "conditioner.embedders."
LABEL = UNET + "label_emb.0.0.weight"
VIDEO_VAE = "first_stage_model.decoder.mid.block_1.time_stack.in_layers.2.weight"
SPATIAL_TIME = UNET + "input_blocks.1.0.time_stack.in_layers.0.weight"  # SVD/SV3D resblocks; SV4D has none
MOTION = UNET + "input_blocks.1.1.time_mixer_motion.mix_factor"  # SV4D 2.0 only
FOUR_D = EMB + "4.encoder.decoder.conv_in.weight"  # SV4D's extra video-latent embedders


@dataclass(frozen=True)
class Arch:
    label: str
    presets: tuple[str, ...]  # same tensors; the first is assumed when the file name does not tell
    probes: dict[str, tuple[int, ...] | None]
    choose: str = ""  # how the presets of one architecture differ, for the note


ARCHS = (
    Arch("SDXL base", ("sdxl-base-1.0", "sdxl-base-0.9", "sdxl-turbo"), {
        LABEL: (1280, 2816),
        EMB + "0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        EMB + "1.model.token_embedding.weight": (49408, 1280)},
        "a distilled 1-4 step model needs -p sdxl-turbo"),
    Arch("SDXL refiner", ("sdxl-refiner-1.0", "sdxl-refiner-0.9"), {
        LABEL: (1536, 2560), EMB + "0.model.token_embedding.weight": (49408, 1280)}),
    Arch("SD 2.x", ("sd-2.1-768", "sd-2.1", "sd-turbo"), {
        LABEL: ABSENT, EMB + "0.model.token_embedding.weight": (49408, 1024),
        UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)},
        "keys cannot tell v-prediction 768 px (sd-2.1-768) from eps 512 px (sd-2.1) or sd-turbo: "
        "if images come out as noise or grey, pass -p sd-2.1"),
    Arch("SVD", ("svd-xt", "svd", "svd-xt-1.1"), {
        LABEL: (1280, 768), EMB + "3.encoder.decoder.conv_in.weight": ANY, VIDEO_VAE: ANY},
        "svd makes 14 frames, svd-xt and svd-xt-1.1 25: pass -p svd for a 14-frame model"),
    Arch("SVD (image decoder)", ("svd-xt-image-decoder", "svd-image-decoder"), {
        LABEL: (1280, 768), EMB + "3.encoder.decoder.conv_in.weight": ANY, VIDEO_VAE: ABSENT,
        "first_stage_model.post_quant_conv.weight": ANY},
        "pass -p svd-image-decoder for a 14-frame model"),
    Arch("SV3D_u", ("sv3d-u",), {LABEL: (1280, 256), SPATIAL_TIME: ANY, FOUR_D: ABSENT}),
    Arch("SV3D_p", ("sv3d-p",), {LABEL: (1280, 1280), SPATIAL_TIME: ANY, FOUR_D: ABSENT}),
    Arch("SV4D", ("sv4d",), {
        FOUR_D: ANY, SPATIAL_TIME: ABSENT, MOTION: ABSENT,
        UNET + "input_blocks.4.1.time_mix_time_embed.0.weight": (2560, 640)}),
    Arch("SV4D 2.0", ("sv4d2", "sv4d2-8views"), {
        FOUR_D: ANY, SPATIAL_TIME: ABSENT, MOTION: ANY,
        UNET + "input_blocks.4.1.time_mix_time_embed.0.weight": (2560, 1280)},
        "pass -p sv4d2-8views for the 8-view model"),
)
LDM_TEXT = ("cond_stage_model.model.", EMB + "0.model.")  # SD 2.x files as the LDM code wrote them


def shapes(header: Header | dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """name -> shape, from a read_header() dict or a plain name -> shape one; LDM names renamed."""
    out = {}
    for key, value in header.items():
        shape = value[1] if len(value) == 2 and isinstance(value[0], str) else value
        if key.startswith(LDM_TEXT[0]):
            key = LDM_TEXT[1] + key[len(LDM_TEXT[0]):]
        out[key] = tuple(shape)  # type: ignore[arg-type]
    return out


def score(arch: Arch, found: dict[str, tuple[int, ...]]) -> float:
    """Fraction of `arch`'s probes the file satisfies."""
    ok = 0
    for key, want in arch.probes.items():
        if want is ABSENT:
            ok += key not in found
        elif key in found and (want == ANY or found[key] == want):
            ok += 1
    return ok / len(arch.probes)


def ranked(found: dict[str, tuple[int, ...]]) -> list[tuple[float, Arch]]:
    """Architectures, best first (ties keep ARCHS' order)."""
    return sorted(((score(a, found), a) for a in ARCHS), key=lambda t: -t[0])


def _by_name(arch: Arch, filename: str) -> str | None:
    """The preset of `arch` whose release file name the file's name contains (longest wins)."""
    from gm import presets

    stem = filename.lower().rsplit(".", 1)[0]
    hits = []
    for name in arch.presets:
        spec = presets.load(name).checkpoint
        release = spec.file.lower().rsplit(".", 1)[0] if spec else ""
        if release and release in stem:
            hits.append((len(release), name))
    if hits:
        return max(hits)[1]
    turbo = [n for n in arch.presets if "turbo" in n]
    if "turbo" in stem and turbo:
        return turbo[0]
    if arch.label == "SD 2.x" and re.search(r"(?<!\d)512(?!\d)", stem):
        return "sd-2.1"
    return None


def detect_preset(source: str | Path | Header | dict, prefer: tuple[str, ...] = ()) -> tuple[str, str]:
    """(preset name, note) for a checkpoint file or its header. The note says which architecture
    was recognised, which preset was assumed among those sharing it, and how to choose another;
    `prefer` (e.g. `gm turbo`'s turbo presets) wins over the architecture's own default when the
    file name does not tell. A file no architecture fits entirely raises CheckpointError naming
    the closest one."""
    filename = ""
    if isinstance(source, (str, Path)):
        from gm.checkpoint import read_header

        filename = Path(source).name
        header = read_header(Path(source))
    else:
        header = source
    found = shapes(header)
    if not any(k.startswith(UNET) for k in found):
        raise CheckpointError(f"{filename or 'this file'} holds no diffusion model (no {UNET}* tensors)",
                              "pass a full checkpoint (UNet, VAE and text encoders in one file)")
    best_score, arch = ranked(found)[0]
    if best_score < 1:
        raise CheckpointError(
            f"{filename or 'this file'} matches no release architecture (closest: {arch.label}, "
            f"preset {arch.presets[0]}, {best_score:.0%} of its probes)",
            "pass -p with the preset it was made from (gm download --list shows them)")
    named = _by_name(arch, filename) if filename else None
    preferred = next((p for p in arch.presets if p in prefer), None)
    chosen = named or preferred or arch.presets[0]
    if len(arch.presets) == 1:
        return chosen, f"{arch.label} checkpoint: preset {chosen}"
    others = ", ".join(p for p in arch.presets if p != chosen)
    how = f"; {arch.choose}" if arch.choose and not named and chosen == arch.presets[0] else ""
    why = "by its file name" if named else "assumed"
    return chosen, f"{arch.label} checkpoint: preset {chosen} ({why}; same tensors as {others}{how})"


def suggestion(header: Header | dict, current: str = "") -> str:
    """'it is an SD 2.x checkpoint: use -p sd-2.1-768' for a file that fully fits another
    architecture than preset `current`; '' when none fits or `current` is among them."""
    found = shapes(header)
    best_score, arch = ranked(found)[0]
    if best_score < 1 or current in arch.presets:
        return ""
    article = "an" if arch.label[0] in "AEFHILMNORSX" else "a"
    return f"it is {article} {arch.label} checkpoint: use -p {arch.presets[0]}"
