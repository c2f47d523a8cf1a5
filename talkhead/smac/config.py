"""SMAC configuration, read from a YAML file in the reference ``options/test.yml`` schema.

Only two sections are used (the rest, ``path``, ``val``, ``name`` ..., is ignored)::

    network_g:                 {type: AppMotionCompFormer, img_size, nf, ch_mult, num_kp, quantizer_type, beta,
                                n_head, warp_s_d_kp_query, MRFA_motion_enc, motion_codebook_split,
                                multiscale_feature_fusion, codebook_size_motion, embed_dim_motion,
                                dim_embd_motion, n_layers_motion, codebook_size_app, embed_dim_app, dim_embd_app,
                                n_layers_app, split, app_codebook_split, connect_list, connect_app_list,
                                fix_modules, ae_path, ...}
    network_motion_estimator:  {type: Motion_Estimator_keypoint_aware,
                                common_params: {num_kp, num_channels},
                                dense_motion_params: {block_expansion, max_features, num_blocks, scale_factor,
                                                      estimate_occlusion_map},
                                kp_detector_params: {temperature, block_expansion, max_features, scale_factor,
                                                     num_blocks, estimate_jacobian}}

The packaged ``talkhead/configs/smac-test.yml`` carries the released values (:func:`default_config_path`).
Keys of ``network_g`` follow the reference constructor ``AppMotionCompFormer.__init__``; options whose
other values select code paths the released model does not use are accepted only at their released
value (the error names the key).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping


from ..errors import ConfigError
from ..fomm.blocks import check_scale
from .generator import AppMotionCompFormer
from .motion_estimator import MotionEstimator

DEFAULT_CONFIG_NAME = "smac-test.yml"

#: network_g keys passed to :class:`AppMotionCompFormer` (reference names), with their defaults
_G_FREE = {
    "beta": 0.25, "codebook_size_motion": 1024, "embed_dim_motion": 32, "codebook_size_app": 1024,
    "embed_dim_app": 256, "n_head": 8, "dim_embd_motion": 32, "n_layers_motion": 2, "dim_embd_app": 256,
    "n_layers_app": 2, "num_kp": 15, "with_position_emb": True, "motion_codebook_split": True,
    "multiscale_feature_fusion": True, "app_codebook_split": True, "wo_motion_cdbk_share": False,
    "wo_app_cdbk_share": False,
}
#: network_g keys fixed by the reference architecture / the released inference path: {key: required value}
_G_FIXED = {
    "img_size": 256, "nf": 64, "ch_mult": [1, 2, 2, 4], "res_blocks": 2, "attn_resolutions": [32],
    "quantizer_type": "nearest", "split": 1, "warp_s_d_kp_query": True, "MRFA_motion_enc": True,
    "multiscale_sft": True, "connect_list": ["64", "128", "256"],
    "connect_app_list": ["32", "64", "128", "256"], "ae_path": None,
}
#: network_g keys that only matter for training (accepted, ignored)
_G_TRAINING = {"type", "fix_modules", "detach_motion_query"}

SIZE_MULTIPLE = 4
"""A size setting may be at most this many times the published model's (:data:`_PUBLISHED_SIZES`):
beyond, building the networks alone costs gigabytes no released model does, so the YAML is refused
before anything is allocated (the frame side is fixed: ``img_size`` 256)."""
_PUBLISHED_SIZES = {
    "network_g.codebook_size_motion": 1024, "network_g.codebook_size_app": 1024, "network_g.dim_embd_motion": 32,
    "network_g.dim_embd_app": 256, "network_g.n_layers_motion": 2, "network_g.n_layers_app": 2,
    "network_g.n_head": 8, "network_g.num_kp": 15,
    "dense_motion_params.block_expansion": 64, "dense_motion_params.max_features": 1024,
    "dense_motion_params.num_blocks": 5, "kp_detector_params.block_expansion": 32,
    "kp_detector_params.max_features": 1024, "kp_detector_params.num_blocks": 5,
}
"""Size settings of the released SMAC model (``smac-test.yml``)."""

_ME_COMMON = {"num_kp", "num_channels"}
_ME_DENSE = {"block_expansion", "max_features", "num_blocks", "scale_factor", "estimate_occlusion_map",
             "kp_variance", "multi_mask", "occlusion_num"}
_ME_KP = {"temperature", "block_expansion", "max_features", "scale_factor", "num_blocks", "estimate_jacobian",
          "single_jacobian_map", "pad"}


def default_config_path() -> Path:
    """Path of the packaged ``talkhead/configs/smac-test.yml`` (released SMAC settings).

    Raises:
        ConfigError: the package data file is missing (a broken installation).
    """
    path = Path(str(resources.files("talkhead").joinpath("configs", DEFAULT_CONFIG_NAME)))
    if not path.is_file():
        raise ConfigError(f"packaged SMAC config missing: {path} (reinstall talkhead)")
    return path


def _section(data: Mapping, name: str, origin: str) -> dict:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{origin}: SMAC config lacks section {name}")
    return copy.deepcopy(dict(value))


@dataclass(frozen=True)
class SMACConfig:
    """SMAC settings: the YAML's ``network_g`` and ``network_motion_estimator`` sections.

    Attributes:
        network_g: generator options (reference names, as in the YAML).
        network_motion_estimator: ``common_params``, ``dense_motion_params``, ``kp_detector_params``.
        origin: where the settings came from (a path, or ``"<dict>"``), quoted in error messages.
    """

    network_g: dict = field(default_factory=dict)
    network_motion_estimator: dict = field(default_factory=dict)
    origin: str = "<dict>"

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "SMACConfig":
        """Read and validate a YAML config in the reference ``options/test.yml`` schema.

        Raises:
            ConfigError: unreadable file, invalid YAML, a missing section, unknown keys, or values the
                implementation does not support (all named in the message).
        """
        from ..io import read_yaml_config

        return cls.from_dict(read_yaml_config(path, "SMAC config"), origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<dict>") -> "SMACConfig":
        """Validate a parsed config (the YAML as a dict). See :meth:`from_yaml` for the errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: a SMAC config must be a mapping, not {type(data).__name__}")
        config = cls(network_g=_section(data, "network_g", origin),
                     network_motion_estimator=_section(data, "network_motion_estimator", origin), origin=origin)
        config.validate()
        return config

    # -- validation -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check both sections.

        Raises:
            ConfigError: see :meth:`from_yaml`.
        """
        src = self.origin
        g = self.network_g
        if g.get("type", "AppMotionCompFormer") != "AppMotionCompFormer":
            raise ConfigError(f"{src}: network_g.type must be AppMotionCompFormer, not {g.get('type')!r}")
        unknown = sorted(set(g) - set(_G_FREE) - set(_G_FIXED) - _G_TRAINING)
        if unknown:
            raise ConfigError(f"{src}: network_g has unknown key(s): {', '.join(unknown)}")
        for key, want in _G_FIXED.items():
            if key in g and _normal(g[key]) != _normal(want):
                raise ConfigError(f"{src}: network_g.{key} = {g[key]!r} is not supported (the SMAC architecture "
                                  f"and its released inference path need {want!r})")
        try:
            ints = {k: int(self.generator_kwargs()[k]) for k in
                    ("codebook_size_motion", "embed_dim_motion", "codebook_size_app", "embed_dim_app", "n_head",
                     "dim_embd_motion", "n_layers_motion", "dim_embd_app", "n_layers_app", "num_kp")}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{src}: network_g has a non-integer size ({exc})") from None
        if ints["embed_dim_motion"] != ints["dim_embd_motion"] or ints["embed_dim_app"] != ints["dim_embd_app"]:
            raise ConfigError(f"{src}: network_g.embed_dim_* must equal dim_embd_* (codebook entries are "
                              "attended as transformer tokens)")
        for name, groups in (("dim_embd_motion", 32), ("dim_embd_app", 1)):
            if ints[name] < 1 or ints[name] % ints["n_head"] or ints[name] % groups:
                why = " and of 32 (GroupNorm(32) in motion_emb)" if groups > 1 else ""
                raise ConfigError(f"{src}: network_g.{name} = {ints[name]} must be a positive multiple of "
                                  f"n_head ({ints['n_head']}){why}")
        for name, parts in (("codebook_size_motion", 4), ("codebook_size_app", 4)):
            if ints[name] < parts or ints[name] % parts:
                raise ConfigError(f"{src}: network_g.{name} = {ints[name]} must be a positive multiple of {parts}")

        me = self.network_motion_estimator
        if me.get("type", "Motion_Estimator_keypoint_aware") != "Motion_Estimator_keypoint_aware":
            raise ConfigError(f"{src}: network_motion_estimator.type must be Motion_Estimator_keypoint_aware")
        unknown = sorted(set(me) - {"type", "common_params", "dense_motion_params", "kp_detector_params"})
        if unknown:
            raise ConfigError(f"{src}: network_motion_estimator has unknown key(s): {', '.join(unknown)}")
        for name, allowed, required in (
                ("common_params", _ME_COMMON, _ME_COMMON),
                ("dense_motion_params", _ME_DENSE, {"block_expansion", "max_features", "num_blocks"}),
                ("kp_detector_params", _ME_KP, {"temperature", "block_expansion", "max_features", "num_blocks"})):
            sec = me.get(name)
            if not isinstance(sec, Mapping):
                raise ConfigError(f"{src}: network_motion_estimator lacks section {name}")
            missing = sorted(required - set(sec))
            if missing:
                raise ConfigError(f"{src}: network_motion_estimator.{name} lacks key(s): {', '.join(missing)}")
            extra = sorted(set(sec) - allowed)
            if extra:
                raise ConfigError(f"{src}: network_motion_estimator.{name} has unknown key(s): {', '.join(extra)}")
        dense = me["dense_motion_params"]
        if dense.get("multi_mask", False):
            raise ConfigError(f"{src}: network_motion_estimator.dense_motion_params.multi_mask is not supported")
        if int(me["common_params"]["num_kp"]) != ints["num_kp"]:
            raise ConfigError(f"{src}: network_g.num_kp ({ints['num_kp']}) differs from the motion estimator's "
                              f"common_params.num_kp ({me['common_params']['num_kp']})")
        if not dense.get("estimate_occlusion_map", False):
            raise ConfigError(f"{src}: SMAC needs dense_motion_params.estimate_occlusion_map: true")
        if not me["kp_detector_params"].get("estimate_jacobian", False):
            raise ConfigError(f"{src}: SMAC needs kp_detector_params.estimate_jacobian: true")
        for name in ("dense_motion_params", "kp_detector_params"):
            sec = me[name]
            scale = float(sec.get("scale_factor", 1))
            if not check_scale(scale):
                raise ConfigError(f"{src}: {name}.scale_factor must be 1/n for an integer n, not {scale}")
            inner = -(-self.frame_size // round(1 / scale))
            if inner % 2 ** int(sec["num_blocks"]):
                raise ConfigError(f"{src}: {self.frame_size} px x {name}.scale_factor {scale} = {inner} px is not "
                                  f"divisible by 2**num_blocks")
        sizes = {f"network_g.{k}": v for k, v in ints.items()}
        for name in ("dense_motion_params", "kp_detector_params"):
            sizes.update({f"{name}.{k}": me[name].get(k) for k in ("block_expansion", "max_features", "num_blocks")})
        for key, published in _PUBLISHED_SIZES.items():
            value = sizes.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= SIZE_MULTIPLE * published:
                raise ConfigError(f"{src}: {key} = {value!r} is outside what talkhead accepts (a positive integer up "
                                  f"to {SIZE_MULTIPLE}x the published {published})")
        if -(-self.frame_size // round(1 / float(dense.get("scale_factor", 1)))) != 64:
            raise ConfigError(f"{src}: the SMAC generator needs a 64x64 dense motion "
                              "(dense_motion_params.scale_factor 0.25 at 256 px)")

    # -- derived values -------------------------------------------------------------------------------
    @property
    def frame_size(self) -> int:
        """Side of the square frames, pixels (256)."""
        return int(self.network_g.get("img_size", 256))

    @property
    def num_kp(self) -> int:
        """Keypoints per frame ``K`` (15 for the release)."""
        return int(self.network_motion_estimator["common_params"]["num_kp"])

    def generator_kwargs(self) -> dict:
        """Arguments of :class:`AppMotionCompFormer` (defaults filled in)."""
        kwargs = {k: self.network_g.get(k, v) for k, v in _G_FREE.items()}
        return {k: (bool(v) if isinstance(_G_FREE[k], bool) else v) for k, v in kwargs.items()}

    # -- builders -------------------------------------------------------------------------------------
    def build_generator(self) -> AppMotionCompFormer:
        """The generator (``net_g``), freshly initialised."""
        return AppMotionCompFormer(**self.generator_kwargs())

    def build_motion_estimator(self) -> MotionEstimator:
        """The motion estimator (``net_motion_estimator``), freshly initialised."""
        me = copy.deepcopy(self.network_motion_estimator)
        dense = {k: v for k, v in me["dense_motion_params"].items() if k not in ("multi_mask", "occlusion_num")}
        return MotionEstimator(me["common_params"], dense, me["kp_detector_params"])


def _normal(value: Any) -> Any:
    """Comparable form of a YAML value (lists of str/int kept, tuples -> lists)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value
