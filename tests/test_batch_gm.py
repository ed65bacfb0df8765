"""gm.batch end to end with today's txt2img pipeline on a tiny SD 2.1: the model loads once for three
prompts, and each job's PNG is byte-identical to `gm txt2img` run alone with the same options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import batch as glue
from commands.app import app
from gm import presets
from gm.batch import manifest, run_jobs
from gm.pipelines import common
from tests.tiny import make_checkpoint

PRESET = str(Path(__file__).resolve().parent / "presets" / "tiny-sd21.toml")
LINES = [{"prompt": "a red fox", "seed": 3}, {"prompt": "a blue bird", "seed": 3, "id": "bird"},
         {"prompt": "a red fox", "seed": 11, "negative": "blurry", "num": 2}]


def test_txt2img_jobs_load_once_and_match_single_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = presets.load(PRESET)
    make_checkpoint(preset, tmp_path / "checkpoints")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(common, "_kept", None)  # restored after the test (the glue turns the cache on)
    loads: list[str] = []
    real_load = common._load
    monkeypatch.setattr(common, "_load", lambda p, *a: loads.append(p.name) or real_load(p, *a))

    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    jobs.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    summary = run_jobs(str(jobs), validate=glue.txt2img_validate(preset, out), options=glue.OPTIONS,
                       prompt_key="prompt", load_model=glue.txt2img_loader(preset, "cpu"),
                       run_one=glue.txt2img_run(preset), out_dir=out, on_done=None)
    assert (summary.done, summary.loads, loads) == (3, 1, ["tiny-sd21"])
    records = manifest.read_records(out / manifest.MANIFEST)
    assert [(r["job"], r["files"], r["seeds"]) for r in records] == [
        ("job-000000", ["job-000000/000000.png"], [3]), ("bird", ["bird/000000.png"], [3]),
        ("job-000002", ["job-000002/000000.png", "job-000002/000001.png"], [11, 12])]

    for k, line in enumerate(LINES):  # the same jobs as single commands
        single = tmp_path / f"single{k}"
        args = ["txt2img", line["prompt"], "--seed", str(line["seed"]), "--preset", PRESET, "--device", "cpu",
                "-o", str(single), "-q"]
        if "negative" in line:
            args += ["--negative", line["negative"], "-n", str(line["num"])]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        name = line.get("id", f"job-{k:06d}")
        written = sorted(single.iterdir())
        assert [p.name for p in written] == [Path(f).name for f in records[k]["files"]]
        for path in written:
            assert (out / name / path.name).read_bytes() == path.read_bytes()
