"""MS-Sync in any keypoint space: the generator, its critics and the syncers take the keypoint count from
their config; data, runs and models record their :class:`~talkhead.keypoints.KeypointSpace`, and two
spaces are never mixed (one line naming both).

The released 10-keypoint model's behaviour and layout are pinned by test_mssync.py, test_layouts.py and
test_e2e_parity.py; here: that a config without the new keys *is* that model, and that 15 keypoints
change exactly the layers that read or write a frame.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talkhead.errors import CheckpointError, ConfigError
from talkhead.keypoints import FOMM_SPACE, KeypointSpace
from talkhead.mssync import MSSyncConfig, MSSyncDiscriminator, MSSyncGenerator, load_mssync
from talkhead.mssync.config import resolve_model_dir
from talkhead.mssync.layout import expected_layout
from talkhead.mssync.syncers import SyncerConfig, SyncerPyramid
from talkhead.train.data import (DATA_MANIFEST_NAME, DataFormatError, DatasetWriter, read_data_space,
                                 settle_run_space)
from talkhead.train.preprocess import merge_shards

SMAC15 = KeypointSpace("smac", 15)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_args(data_dir) -> dict:
    return json.loads((data_dir / "mssync" / "args").read_text())


def smac_config(tiny_args) -> MSSyncConfig:
    return MSSyncConfig.from_dict({**tiny_args, "num_kp": 15, "keypoint_space": "smac", "coord_dim_D": 16,
                                   "hidden_size_D": 16, "dis_config": 1})


# ------------------------------------------------------------------------------------------ configs
def test_released_args_mean_fomm_space_and_round_trip_unchanged(data_dir, tiny_args):
    cfg = MSSyncConfig.from_args_file(data_dir / "mssync" / "args")
    assert cfg.space == FOMM_SPACE and (cfg.num_kp, cfg.keypoint_space) == (10, "fomm")
    assert cfg.to_args_dict() == tiny_args  # no num_kp / keypoint_space key added to a released args
    assert MSSyncConfig.default().space == FOMM_SPACE


def test_space_keys_round_trip_through_the_args_file(tiny_args, tmp_path):
    cfg = smac_config(tiny_args)
    cfg.to_args_file(tmp_path / "args")
    written = json.loads((tmp_path / "args").read_text())
    assert (written["num_kp"], written["keypoint_space"], written["data_dim"]) == (15, "smac", 6)
    assert MSSyncConfig.from_args_file(tmp_path / "args").space == SMAC15


@pytest.mark.parametrize("change, needle", [
    ({"num_kp": 0}, "num_kp=0"), ({"num_kp": "15"}, "'num_kp'"), ({"num_kp": 1000}, "num_kp=1000"),
    ({"keypoint_space": ""}, "'keypoint_space'"), ({"keypoint_space": 15}, "'keypoint_space'"),
])
def test_bad_space_keys_are_config_errors(tiny_args, change, needle):
    with pytest.raises(ConfigError, match=needle):
        MSSyncConfig.from_dict({**tiny_args, **change}, source="args")


# ------------------------------------------------------------------------------------------ models
def test_fifteen_keypoints_change_exactly_the_frame_layers(tiny_args):
    ten, fifteen = (expected_layout(c)["checkpoints"] for c in (MSSyncConfig.from_dict(tiny_args), smac_config(tiny_args)))
    assert list(ten) == list(fifteen)  # same keys, same order
    changed = {k: (ten[k], fifteen[k]) for k in ten if ten[k] != fifteen[k]}
    assert changed["encoder_x.0.weight"] == ((272, 60), (272, 90))  # hidden widths 272/1088 kept
    assert changed["final_block.weight"] == ((60, 300), (90, 450))
    assert changed["mask_bias.fc_out.weight"] == ((10, 136), (15, 136))  # one mask per keypoint
    assert changed["leaf_bias.fc_out.weight"] == ((60, 136), (90, 136))  # one leaf number per frame number
    assert changed["mask.fc_out.bias"] == ((40,), (60,)) and changed["leaf.fc_out.bias"] == ((240,), (360,))
    assert sorted(changed) == sorted(["encoder_x.0.weight", "final_block.weight", "final_block.bias"] + [
        f"{net}.fc_out.{p}" for net in ("mask", "leaf", "mask_bias", "leaf_bias") for p in ("weight", "bias")])


def test_fifteen_keypoint_generator_critics_and_syncers_run(tiny_args):
    cfg = smac_config(tiny_args)
    torch.manual_seed(0)
    gen, dis = MSSyncGenerator(cfg), MSSyncDiscriminator(cfg)
    dis.windows = (5,)  # short test sequences (as `train generator`'s discriminator.windows)
    x = torch.randn(2, 3 + 8, 15, 6) * 0.1
    audio = torch.randn(2, 4 * 11, 26)
    x_rec, x_pred = gen(x[:, :3], audio)
    assert x_rec.shape == (2, 2, 15, 6) and x_pred.shape == (2, 8, 15, 6)
    loss = dis.compute_gen_loss(x, x_pred)[0]
    loss.backward()
    assert torch.isfinite(loss) and gen.encoder_x[0].weight.grad.abs().sum() > 0
    pyramid = SyncerPyramid(SyncerConfig(levels=2, hidden=8, embed_dim=4, num_kp=15, keypoint_space="smac"))
    assert pyramid.space == SMAC15
    (e_x, e_a), _ = pyramid(torch.randn(1, 16, 15, 6), torch.randn(1, 64, 26))
    assert e_x.shape == e_a.shape == (1, 12, 4)
    with pytest.raises(RuntimeError):  # a 10-keypoint window does not fit a 15-keypoint syncer
        pyramid(torch.randn(1, 16, 10, 6), torch.randn(1, 64, 26))


def test_syncer_config_without_space_keys_is_fomm():
    cfg = SyncerConfig.from_mapping({"levels": 2, "hidden": 8, "embed_dim": 4})
    assert cfg.space == FOMM_SPACE
    assert SyncerConfig.from_mapping({"num_kp": None, "kp_dim": None, "keypoint_space": None}).space == FOMM_SPACE
    with pytest.raises(ConfigError, match="kp_dim"):
        SyncerConfig.from_mapping({"kp_dim": 5})


def test_trained_model_folder_loads_by_run_dir_or_its_mssync_folder(tiny_args, tmp_path):
    cfg = smac_config(tiny_args)
    model_dir = tmp_path / "run" / "mssync"
    model_dir.mkdir(parents=True)
    cfg.to_args_file(model_dir / "args")
    torch.save({"checkpoints": MSSyncGenerator(cfg).state_dict()}, model_dir / "model_chkpt.pt")
    assert resolve_model_dir(tmp_path / "run") == model_dir == resolve_model_dir(model_dir)
    for path in (tmp_path / "run", model_dir):
        assert load_mssync(path).config.space == SMAC15
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="lacks 'args'"):
        load_mssync(tmp_path / "empty")
    bad = {k: v for k, v in MSSyncGenerator(cfg).state_dict().items()}
    bad["final_block.bias"] = bad["final_block.bias"] * float("nan")
    torch.save({"checkpoints": bad}, model_dir / "model_chkpt.pt")
    with pytest.raises(CheckpointError, match="NaN"):
        load_mssync(tmp_path / "run")


# ------------------------------------------------------------------------------------------ data
def _clip(space: KeypointSpace, frames: int = 60):
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.1, (frames, space.num_kp, space.kp_dim)).astype(np.float32), \
        rng.normal(0, 1, (4 * frames, 26)).astype(np.float32)


def test_manifest_records_the_space_and_old_manifests_are_fomm(tmp_path):
    with DatasetWriter(tmp_path / "smac", space=SMAC15) as w:
        w.add("a", *_clip(SMAC15))
    doc = json.loads((tmp_path / "smac" / DATA_MANIFEST_NAME).read_text())
    assert (doc["keypoint_space"], doc["num_kp"], doc["kp_dim"]) == ("smac", 15, 6)
    assert read_data_space(tmp_path / "smac") == SMAC15
    with DatasetWriter(tmp_path / "fomm") as w:
        w.add("a", *_clip(FOMM_SPACE))
    path = tmp_path / "fomm" / DATA_MANIFEST_NAME
    doc = json.loads(path.read_text())
    del doc["keypoint_space"]  # written before the key existed
    path.write_text(json.dumps(doc))
    assert read_data_space(tmp_path / "fomm") == FOMM_SPACE
    doc["num_kp"] = 15
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match="no keypoint_space"):
        read_data_space(tmp_path / "fomm")


def test_spaces_are_never_mixed_in_one_folder(tmp_path):
    with DatasetWriter(tmp_path / "fomm") as w:
        w.add("a", *_clip(FOMM_SPACE))
    with pytest.raises(DataFormatError) as err:
        DatasetWriter(tmp_path / "fomm", space=SMAC15)
    msg = str(err.value)
    assert "\n" not in msg and "fomm keypoint space (10 keypoints" in msg and "smac keypoint space (15" in msg
    with pytest.raises(DataFormatError, match=r"keypoints must have shape \(T, 15, 6\)"):
        with DatasetWriter(tmp_path / "smac", space=SMAC15) as w:
            w.add("b", *_clip(FOMM_SPACE))
    with DatasetWriter(tmp_path / "smac", space=SMAC15) as w:
        w.add("b", *_clip(SMAC15))
    with pytest.raises(DataFormatError, match="smac keypoint space.*fomm keypoint space|fomm keypoint space.*smac"):
        merge_shards([tmp_path / "fomm", tmp_path / "smac"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()  # refused before anything was linked
    assert len(merge_shards([tmp_path / "smac"], tmp_path / "merged")) == 1
    assert read_data_space(tmp_path / "merged") == SMAC15


def test_a_run_config_of_another_space_is_refused(tmp_path):
    with DatasetWriter(tmp_path / "smac", space=SMAC15) as w:
        w.add("a", *_clip(SMAC15))
    model = {"hidden": 8, "keypoint_space": None, "num_kp": None, "kp_dim": None}
    assert settle_run_space(model, tmp_path / "smac") == SMAC15
    assert (model["keypoint_space"], model["num_kp"], model["kp_dim"]) == ("smac", 15, 6)
    with pytest.raises(DataFormatError, match="the run being resumed holds the fomm keypoint space"):
        settle_run_space({"keypoint_space": "fomm", "num_kp": 10, "kp_dim": 6}, tmp_path / "smac", resume=True)
    with pytest.raises(DataFormatError, match="the run config holds the smac keypoint space \\(10 keypoints"):
        settle_run_space({"num_kp": 10}, tmp_path / "smac")


def test_a_motion_model_data_dim_of_neither_2_nor_6_is_a_config_error(tiny_args):
    """``data_dim`` 4 is not a keypoint space (points are 2 numbers, points + jacobian 6): asking the
    config for its space is one ConfigError, not a space that describes the model wrongly."""
    import dataclasses

    from talkhead.errors import ConfigError
    from talkhead.mssync.config import MSSyncConfig

    cfg = dataclasses.replace(MSSyncConfig.from_dict(tiny_args), data_dim=4)
    with pytest.raises(ConfigError, match="kp_dim must be"):
        cfg.space
