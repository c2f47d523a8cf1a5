"""The expected checkpoint listings (``talkhead.fomm.layout``, ``talkhead.mssync.layout``) equal the
model classes' state dicts: for the tiny configs against freshly built modules, and for the
full-size configs against the official listings in tests/data (which test_fomm/test_mssync also
compare with built modules), without building the full-size networks here."""
from __future__ import annotations

import json

import pytest
import torch

from talkhead.fomm import FOMMConfig, default_config_path
from talkhead.fomm.layout import expected_layout as fomm_layout
from talkhead.mssync import MSSyncConfig, MSSyncGenerator
from talkhead.mssync.layout import expected_layout as mssync_layout
from talkhead.mssync.layout import layout_for_config_file
from talkhead.errors import ConfigError


def _shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_fomm_listing_equals_built_modules(fomm_tiny_files):
    config = FOMMConfig.from_yaml(fomm_tiny_files[0])
    layout = fomm_layout(config)
    assert list(layout) == ["kp_detector", "generator"]
    assert list(layout["kp_detector"].items()) == _shapes(config.build_kp_detector())
    assert list(layout["generator"].items()) == _shapes(config.build_generator())
    ckpt = torch.load(fomm_tiny_files[1], map_location="cpu", weights_only=True)
    for entry, listing in layout.items():  # and the tiny released-format checkpoint has exactly these
        assert [(k, tuple(v.shape)) for k, v in ckpt[entry].items()] == list(listing.items())


def test_fomm_full_listing_equals_official(data_dir):
    official = json.loads((data_dir / "fomm" / "vox-adv-256.keys.json").read_text())
    layout = fomm_layout(FOMMConfig.from_yaml(default_config_path()))
    for entry in ("kp_detector", "generator"):
        want = [(e["key"], tuple(e["shape"])) for e in official["modules"][entry]["state_dict"]]
        assert list(layout[entry].items()) == want
    assert len(layout["generator"]) == 196 and len(layout["kp_detector"]) == 75


def test_mssync_listing_equals_built_module(mssync_tiny_dir, data_dir):
    config = MSSyncConfig.from_args_file(mssync_tiny_dir / "args")
    listing = layout_for_config_file(mssync_tiny_dir / "args")["checkpoints"]
    assert list(listing.items()) == _shapes(MSSyncGenerator(config))
    official = json.loads((data_dir / "mssync" / "keys-default.json").read_text())
    want = [(e["key"], tuple(e["shape"])) for e in official["modules"]["DynamicalModel"]["state_dict"]]
    assert list(mssync_layout(MSSyncConfig.default())["checkpoints"].items()) == want
    with pytest.raises(ConfigError, match="args"):
        layout_for_config_file(None)
