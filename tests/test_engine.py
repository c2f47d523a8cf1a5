"""Training engine: config merging, atomic weights-only checkpoints, exact resume, Ctrl-C, NaN guard."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from talkhead.errors import CheckpointError, ConfigError, OutputError
from talkhead.train.engine import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, NonFiniteLossError, RunContext,
                                   TrainingInterrupted, TrainTask, get_rng_state, load_run_config,
                                   read_run_checkpoint, run_training, set_rng_state)
from talkhead.train.synthetic import make_synthetic_dataset
from talkhead.train.syncers import load_syncers, train_syncers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {"batch_size": 4, "segment_frames": 48, "model.hidden": 8, "model.embed_dim": 8, "anchors_per_segment": 2,
        "val_every": 2, "log_every": 1, "lr": 1e-3}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth_engine")
    make_synthetic_dataset(d, num_clips=6, num_frames=96, val_clips=1, seed=3)
    return d


def _train_losses(run_dir) -> dict[int, dict]:
    out = {}
    for line in (run_dir / METRICS_NAME).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train":
            out[rec["step"]] = {k: v for k, v in rec.items() if k.startswith(("loss", "acc"))}
    return out


# --------------------------------------------------------------------------------------- config
def test_config_merge_types_and_unknown_keys():
    defaults = {"seed": 0, "steps": 10, "lr": 1e-4, "flag": False, "betas": [0.9, 0.999], "model": {"hidden": 8}}
    cfg = load_run_config(defaults, {"lr": 1, "model": {"hidden": 16}}, {"steps": 20.0, "model.hidden": 32})
    assert cfg == {"seed": 0, "steps": 20, "lr": 1.0, "flag": False, "betas": [0.9, 0.999], "model": {"hidden": 32}}
    assert isinstance(cfg["lr"], float) and isinstance(cfg["steps"], int)
    assert defaults["model"]["hidden"] == 8  # defaults untouched
    with pytest.raises(ConfigError, match="unknown config key 'model.width'"):
        load_run_config(defaults, overrides={"model.width": 3})
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        load_run_config(defaults, overrides={"steps": 2.5})
    with pytest.raises(ConfigError, match="'flag' must be true/false"):
        load_run_config(defaults, overrides={"flag": "yes"})


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    import random

    random.seed(3)
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(loaded)
    b = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert a == b


# --------------------------------------------------------------------------------------- resume
def test_sigint_checkpoint_then_resume_matches_uninterrupted(synth_dir, tmp_path):
    n = 4
    cfg = {**TINY, "steps": 2 * n, "checkpoint_every": 100}
    full = tmp_path / "full"
    train_syncers(synth_dir, full, overrides=cfg)

    part = tmp_path / "part"

    def interrupt_at_n(event):
        if event.kind == "step" and event.step == n:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {n}/{2 * n}") as info:
        train_syncers(synth_dir, part, overrides=cfg, progress=interrupt_at_n)
    assert info.value.exit_code == 130
    ckpt = torch.load(part / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["step"] == n and set(ckpt["rng"][0]) >= {"python", "numpy", "torch"}
    assert not list(part.glob("*.tmp")) and not list(part.glob(".*.tmp"))

    with pytest.raises(OutputError, match="already holds a training checkpoint"):
        train_syncers(synth_dir, part, overrides=cfg)
    train_syncers(synth_dir, part, resume=True)  # steps come from the saved config

    a, b = _train_losses(full), _train_losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 2 * n + 1))  # metrics.jsonl reads like one run
    assert a == b  # bit-identical losses and accuracies after resume
    sa, sb = load_syncers(full).state_dict(), load_syncers(part).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the losses really change from step to step (the comparison is not vacuous)
    assert len({round(v["loss"], 6) for v in a.values()}) == 2 * n


def test_resume_with_more_steps_equals_one_longer_run(synth_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train_syncers(synth_dir, full, overrides={**TINY, "steps": 6, "checkpoint_every": 3})
    train_syncers(synth_dir, part, overrides={**TINY, "steps": 3, "checkpoint_every": 3})
    with pytest.raises(ConfigError, match="lr"):
        train_syncers(synth_dir, part, resume=True, overrides={"steps": 6, "lr": 0.5})
    train_syncers(synth_dir, part, resume=True, overrides={"steps": 6})
    assert _train_losses(full) == _train_losses(part)
    assert read_run_checkpoint(part)["step"] == 6
    assert "steps: 6" in (part / CONFIG_NAME).read_text()


def test_resume_without_checkpoint_is_a_clear_error(synth_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):
        train_syncers(synth_dir, tmp_path / "none", resume=True, overrides={"steps": 2})


# --------------------------------------------------------------------------------------- NaN guard
class _Regression(TrainTask):
    """y = 3x with one linear layer; the loss is replaced by NaN from step ``nan_at``."""

    name = "regression"

    def __init__(self, nan_at: int):
        self.nan_at = nan_at

    def setup(self, ctx: RunContext) -> None:
        self.net = torch.nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)

    def models(self):
        return {"net": self.net}

    def optimizers(self):
        return {"sgd": self.opt}

    def batches(self, start_step):
        while True:
            yield None

    def train_step(self, batch, step):
        x = torch.randn(8, 1)
        loss = ((self.net(x) - 3 * x) ** 2).mean()
        if step >= self.nan_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = {"seed": 0, "steps": 10, "checkpoint_every": 2, "log_every": 1, "device": "cpu"}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5: loss=nan.*last good checkpoint \(step 4\)"):
        run_training(_Regression(nan_at=5), tmp_path, cfg)
    ckpt = read_run_checkpoint(tmp_path)
    assert ckpt["step"] == 4
    w = ckpt["models"]["net"]["weight"]
    assert torch.isfinite(w).all()
    # the saved weights are exactly those of a clean 4-step run
    clean = tmp_path / "clean"
    run_training(_Regression(nan_at=99), clean, {**cfg, "steps": 4})
    assert torch.equal(read_run_checkpoint(clean)["models"]["net"]["weight"], w)
    events = [json.loads(l) for l in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert {"event": "non_finite", "step": 5, "loss": "nan"} in events
    # a broken checkpoint file is reported as such
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        run_training(_Regression(nan_at=99), tmp_path, cfg, resume=True)


def test_run_configs_are_typed_and_checked_once():
    from talkhead.train.engine import EngineConfig, typed_config
    from talkhead.train.generator import GeneratorRunConfig, default_config as generator_defaults
    from talkhead.train.syncers import SyncerRunConfig, default_config as syncer_defaults

    cfg = SyncerRunConfig.from_config(syncer_defaults())
    assert cfg.betas == (0.9, 0.999) and isinstance(cfg.lr, float) and cfg.model.levels == 4
    gen = generator_defaults()
    gen["discriminator"] = {"windows": [5, 10]}
    g = GeneratorRunConfig.from_config(gen)
    assert g.discriminator_windows == (5, 10) and g.losses.sync == 8.0 and g.augment.scale == 0.1
    assert GeneratorRunConfig.from_config(generator_defaults()).discriminator_windows is None
    assert typed_config(EngineConfig, {"seed": 1, "steps": 2.0}).steps == 2      # an integral float is an int
    with pytest.raises(ConfigError, match="'negatives' must be an integer"):
        SyncerRunConfig.from_config({**syncer_defaults(), "negatives": "many"})
    with pytest.raises(ConfigError, match="'betas' must be a list of 2"):
        SyncerRunConfig.from_config({**syncer_defaults(), "betas": [0.9]})
    with pytest.raises(ConfigError, match="lacks 'steps'"):
        EngineConfig.from_config({"seed": 0})
