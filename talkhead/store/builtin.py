"""The models talkhead ships with: FOMM vox-adv-256 and the MS-Sync generator (what ``animate`` needs),
the optional SMAC renderer, the optional SyncNet scorer (``talkhead score``) and the optional GFPGAN
face restorer (``--enhance gfpgan``), registered with :func:`talkhead.store.registry.register_model` when
the store is imported.

Each layout and packaged-config callable imports its model package (layer 3) when it is called, never
when the store is imported. One card per model (sources in order, pinned digests, layout, licence,
citation) is in the repository's ``models/`` folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ..mssync.config import ARGS_NAME, CHECKPOINT_NAME
from .registry import ModelFile, ModelSpec, Pin, Source, register_model

SMAC_SHARE = ("https://hkustconnect-my.sharepoint.com/:f:/g/personal/szhaoax_connect_ust_hk/"
              "Euur-8TShbNJr_i4yTMjtNUBFxm1OLaF2ndt2IymB6pC0w?e=cmZHYA")
"""The SMAC authors' OneDrive folder (README of ShaelynZ/synergize-motion-appearance): a browser share,
so its files are downloaded by hand."""

FOMM_DRIVE_FOLDER = "1PyQJmkdCsAkOYwUyaj_l-l0as-iLDgeH"
"""The FOMM authors' checkpoint folder (README of AliaksandrSiarohin/first-order-model)."""
MSSYNC_DRIVE_FOLDER = "1dtNgqMLWNAkjH_wEkwJrzR9vJJ6ORwV3"
"""The MS-Sync authors' checkpoint folder (README of LouisBearing/HMo-audio)."""

FOMM_PINS = (
    Pin("sha256", "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3", "published", 750926934,
        "vox-adv-cpk.pth.tar as the FOMM authors published it (751 MB: generator, discriminator, kp_detector, "
        "optimizers, epoch)"),
    Pin("md5", "8a45a24037871c045fbb8a6a8aa95ebc", "avatarify-trimmed", None,
        "avatarify's trimmed copy (228 MB: generator + kp_detector only); avatarify publishes its md5, "
        "its sha256 is recorded in manifest.json from the first verified copy"),
)

SYNCNET_PINS = (
    Pin("sha256", "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442", "published", 54573114,
        "syncnet_v2.model as Oxford VGG publishes it (a torch.save'd state dict; VGG publishes no digest, this one "
        "is the one independent codebases check)"),
)

GFPGAN_PINS = (
    Pin("sha256", "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", "published", 348632874,
        "GFPGANv1.4.pth as TencentARC's GitHub release v1.3.0 carries it (params_ema of GFPGANv1Clean); TencentARC "
        "publishes no digest, this one is the one independent codebases check"),
)

GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download"
"""TencentARC/GFPGAN's GitHub releases (README: v1.3.0 carries GFPGANv1.4.pth; v1.3.4 has the same file)."""

Listing = Mapping[str, Mapping[str, tuple[int, ...]]]


# The callables look the model package's function up when called (so a test's monkeypatch of
# ``talkhead.fomm.default_config_path`` is seen) and import it there, downward (layer 4 -> 3).
def fomm_packaged_config() -> Path:
    """The FOMM vox-adv-256 YAML that ships with talkhead (:func:`talkhead.fomm.default_config_path`)."""
    from .. import fomm

    return Path(fomm.default_config_path())


def fomm_layout(config_path: Path) -> Listing:
    """FOMM's expected state dicts for a config (:func:`talkhead.fomm.layout.layout_for_config_file`)."""
    from ..fomm.layout import layout_for_config_file

    return layout_for_config_file(config_path)


def mssync_layout(config_path: Path) -> Listing:
    """MS-Sync's expected state dict for an ``args`` file (:func:`talkhead.mssync.layout.layout_for_config_file`)."""
    from ..mssync.layout import layout_for_config_file

    return layout_for_config_file(config_path)


def smac_packaged_config() -> Path:
    """The SMAC YAML that ships with talkhead (:func:`talkhead.smac.default_config_path`)."""
    from .. import smac

    return Path(smac.default_config_path())


def smac_generator_layout(config_path: Optional[Path]) -> Listing:
    """SMAC's generator listing (:func:`talkhead.smac.layout.generator_layout`)."""
    from ..smac.layout import generator_layout

    return generator_layout(config_path)


def smac_motion_estimator_layout(config_path: Optional[Path]) -> Listing:
    """SMAC's motion estimator listing (:func:`talkhead.smac.layout.motion_estimator_layout`)."""
    from ..smac.layout import motion_estimator_layout

    return motion_estimator_layout(config_path)


FOMM = ModelSpec(
    name="fomm",
    title="FOMM vox-adv-256",
    files=(
        ModelFile("fomm/vox-adv-256.yaml", "config", "FOMM vox-adv-256 config (ships with talkhead)",
                  packaged=fomm_packaged_config),
        ModelFile("fomm/vox-adv-cpk.pth.tar", "checkpoint", "FOMM vox-adv-256 checkpoint", sources=(
            Source("drive-folder", FOMM_DRIVE_FOLDER, "Google Drive folder of the FOMM authors", "vox-adv-cpk.pth.tar"),
            Source("url", "https://github.com/graphemecluster/first-order-model-demo/releases/download/"
                   "checkpoints/vox-adv-cpk.pth.tar", "GitHub release of graphemecluster/first-order-model-demo"),
            Source("url", "https://huggingface.co/spaces/abhishek/first-order-motion-model/resolve/main/"
                   "weights/vox-adv-cpk.pth.tar", "Hugging Face Space abhishek/first-order-motion-model"),
            Source("url", "https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar", "avatarify's S3 bucket"),
            Source("drive-file", "1coUCdyRXDbpWnEkA99NLNY60mb9dQ_n3", "Google Drive file of avatarify"),
        ), pins=FOMM_PINS, layout=fomm_layout, entries=(("kp_detector",), ("generator",))),
    ),
)

MSSYNC = ModelSpec(
    name="mssync",
    title="MS-Sync generator",
    files=(
        ModelFile(f"mssync/{ARGS_NAME}", "config", "MS-Sync generator config (args, JSON)", sources=(
            Source("drive-folder", MSSYNC_DRIVE_FOLDER, "Google Drive folder of the MS-Sync authors", ARGS_NAME),)),
        ModelFile(f"mssync/{CHECKPOINT_NAME}", "checkpoint", "MS-Sync generator checkpoint", sources=(
            Source("drive-folder", MSSYNC_DRIVE_FOLDER, "Google Drive folder of the MS-Sync authors", CHECKPOINT_NAME),),
            layout=mssync_layout, entries=(("checkpoints",),)),
    ),
)
"""MS-Sync is loaded as a folder (:func:`talkhead.mssync.load_mssync`, ``model_dir(root, "mssync")``)."""

SMAC = ModelSpec(
    name="smac",
    title="SMAC renderer",
    files=(
        ModelFile("smac/config.yml", "config", "SMAC config, options/test.yml schema (ships with talkhead)",
                  packaged=smac_packaged_config),
        ModelFile("smac/net_g_latest.pth", "checkpoint", "SMAC generator (net_g)", by_hand=SMAC_SHARE,
                  layout=smac_generator_layout, entries=(("params_ema", "params"),), strip_prefix="module.",
                  key="generator"),
        ModelFile("smac/net_motion_estimator_latest.pth", "checkpoint",
                  "SMAC motion estimator (keypoints + dense motion)", by_hand=SMAC_SHARE,
                  layout=smac_motion_estimator_layout, entries=(("params",),), strip_prefix="module.",
                  key="motion_estimator"),
    ),
    optional=True,
    notice="SMAC's code and weights are licensed CC BY-NC 4.0 (parts NTU S-Lab License 1.0): "
           "non-commercial use only (models/smac.md)",
)

def syncnet_check(path: Path) -> None:
    """SyncNet's file check (:func:`talkhead.syncnet.read_state_dict`: safe loading, exactly the
    released keys and widths, BatchNorm counters optional, finite weights)."""
    from .. import syncnet

    syncnet.read_state_dict(path, mmap=True)


SYNCNET = ModelSpec(
    name="syncnet",
    title="SyncNet v2",
    files=(
        ModelFile("syncnet/syncnet_v2.model", "checkpoint", "SyncNet v2 (lip-sync scorer, joonson/syncnet_python)",
                  sources=(
                      Source("url", "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
                             "Oxford VGG (the authors' page)"),
                      Source("url", "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/auxiliary/"
                             "syncnet_v2.model", "Hugging Face ByteDance/LatentSync-1.6 (its evaluation copy)"),
                  ), pins=SYNCNET_PINS, check=syncnet_check),
    ),
    optional=True,
    notice="SyncNet's weights are Oxford VGG's, for research purposes under Creative Commons Attribution: "
           "not a commercial licence (models/syncnet.md)",
)
"""SyncNet has no config: the file is a bare state dict whose widths are the released ones."""


def gfpgan_check(path: Path) -> None:
    """GFPGAN's file check (:func:`talkhead.gfpgan.read_state_dict`: safe loading, a ``params_ema`` entry
    with exactly v1.4's keys and shapes, finite weights)."""
    from .. import gfpgan

    gfpgan.read_state_dict(path, mmap=True)


GFPGAN = ModelSpec(
    name="gfpgan",
    title="GFPGAN v1.4",
    files=(
        ModelFile("gfpgan/GFPGANv1.4.pth", "checkpoint", "GFPGAN v1.4 face restorer (TencentARC, clean architecture)",
                  sources=(
                      Source("url", f"{GFPGAN_RELEASE}/v1.3.0/GFPGANv1.4.pth", "GitHub release v1.3.0 of TencentARC/GFPGAN"),
                      Source("url", f"{GFPGAN_RELEASE}/v1.3.4/GFPGANv1.4.pth", "GitHub release v1.3.4 of TencentARC/GFPGAN"),
                  ), pins=GFPGAN_PINS, check=gfpgan_check),
    ),
    optional=True,
    notice="GFPGAN's code is Apache-2.0; its weights were trained on FFHQ, whose images are CC BY-NC-SA 4.0 "
           "(models/gfpgan.md)",
)
"""GFPGAN has no config: the file's ``params_ema`` entry is checked against v1.4's widths."""

for _spec in (FOMM, MSSYNC, SMAC, SYNCNET, GFPGAN):
    register_model(_spec)
del _spec
