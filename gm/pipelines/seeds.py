"""Which seed a run uses: the one the user fixed, the preset's documented one, or a fresh draw.

Every generating command and `gm.api` method resolves its seed here, so they agree: no seed (None)
or -1 draws a fresh one (recorded in every output, so any output can be re-made with `--seed N`, and
printed on stderr by `announce` once the run's checks have passed); `preset` takes the seed the preset
documents (the reference demo's); any other negative number is a usage error.
"""

from __future__ import annotations

import secrets

from gm.console import console
from gm.errors import UsageError

RANDOM = -1
PRESET = "preset"
# Fresh seeds stay below 2^31: within every consumer's range (numpy's RandomState takes < 2^32 and
# the Turbo noise uses seed + k + step) and easy to retype.
DRAW_LIMIT = 2**31
SEED_HINT = "give --seed N (N >= 0), --seed -1 for a random one, or --seed preset for the preset's"


def draw_seed() -> int:
    """A fresh seed in [0, 2^31) from the OS's entropy (not from torch's global generator, which
    a library user may have seeded)."""
    return secrets.randbelow(DRAW_LIMIT)


def parse_seed(value: int | str | None) -> int | str | None:
    """Command-line text -> an int, PRESET or None (random); UsageError on anything else."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip().lower()
    if text in (PRESET, "random"):
        return PRESET if text == PRESET else None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--seed {value!r} is not a number", SEED_HINT) from None


def is_random(value: int | str | None) -> bool:
    """Does `value` ask for a fresh seed (None, -1, "random")?"""
    return parse_seed(value) in (None, RANDOM)


def announce(seed: int, drawn: bool) -> None:
    """Say a drawn seed on stderr ("seed N"), so the run can be repeated; a given one is not repeated."""
    if drawn:
        console.log(f"seed {seed}")


def resolve_seed(value: int | str | None, preset_seed: int) -> int:
    """The seed to run with: `value` (an int, a numeric string, `preset`, or None / -1 = random)."""
    value = parse_seed(value)
    if value == PRESET:
        return preset_seed
    if value is None or value == RANDOM:
        return draw_seed()
    assert isinstance(value, int)
    if not 0 <= value < 2**64:
        raise UsageError(f"--seed must be in [0, 2^64) or -1 (random), got {value}", SEED_HINT)
    return value
