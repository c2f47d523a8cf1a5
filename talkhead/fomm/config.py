"""FOMM model configuration, read from a YAML file in the official ``first-order-model`` schema.

The schema (see ``config/vox-adv-256.yaml`` of the official repository and our packaged copy of its
settings, ``talkhead/configs/vox-adv-256.yaml``)::

    dataset_params:  {frame_shape: [H, W, C], ...}
    model_params:
      common_params:        {num_kp, num_channels, estimate_jacobian}
      kp_detector_params:   {temperature, block_expansion, max_features, scale_factor, num_blocks}
      generator_params:     {block_expansion, max_features, num_down_blocks, num_bottleneck_blocks,
                             estimate_occlusion_map, dense_motion_params: {block_expansion, max_features,
                                                                           num_blocks, scale_factor}}
      discriminator_params: {scales, block_expansion, max_features, num_blocks, use_kp}   (optional here)

Other sections (``train_params``, ``animate_params``, ...) are ignored. The frame size always comes
from ``dataset_params.frame_shape``.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional


from ..errors import ConfigError
from .blocks import check_scale
from .dense_motion import DenseMotionNetwork
from .discriminator import Discriminator, MultiScaleDiscriminator
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KPDetector

DEFAULT_CONFIG_NAME = "vox-adv-256.yaml"


def default_config_path() -> Path:
    """Path of the packaged ``talkhead/configs/vox-adv-256.yaml`` (official vox-adv-256 settings).

    Raises:
        ConfigError: the package data file is missing (a broken installation).
    """
    ref = resources.files("talkhead").joinpath("configs", DEFAULT_CONFIG_NAME)
    path = Path(str(ref))
    if not path.is_file():
        raise ConfigError(f"packaged FOMM config missing: {path} (reinstall talkhead)")
    return path


def _accepted_params(cls) -> tuple[set[str], set[str]]:
    """(all keyword names, required keyword names) of ``cls.__init__`` (``**kwargs`` excluded)."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


def _check_section(section: str, params: Mapping, cls, provided_elsewhere: set[str], source: str,
                   strict: bool = True) -> None:
    accepted, required = _accepted_params(cls)
    accepted.discard("align_corners")  # a runtime option of talkhead, not a YAML key
    missing = sorted(required - provided_elsewhere - set(params))
    if missing:
        raise ConfigError(f"{source}: {section} lacks required key(s): {', '.join(missing)}")
    unknown = sorted(set(params) - accepted)
    if strict and unknown:
        raise ConfigError(f"{source}: {section} has unknown key(s): {', '.join(unknown)}")


PUBLISHED_FRAME_SIZE = 256
"""Frame side of the published FOMM models (``vox-adv-256``), pixels."""
PUBLISHED_PARAMETERS = 59_790_759
"""Parameters of the published ``vox-adv-256`` keypoint detector + generator."""
SIZE_MULTIPLE = 4
"""A config may describe frames up to this many times the published side (1024 px) and networks up
to this many times the published parameter count (239 M): beyond, inference needs gigabytes (frames
cost the square of the side) that no released model does; a YAML asking for more is refused before
anything is allocated."""

_INT_KEYS = frozenset({"num_kp", "num_channels", "block_expansion", "max_features", "num_blocks",
                       "num_down_blocks", "num_bottleneck_blocks", "pad"})
_FLOAT_KEYS = frozenset({"temperature", "scale_factor", "kp_variance"})
_BOOL_KEYS = frozenset({"estimate_jacobian", "single_jacobian_map", "estimate_occlusion_map", "use_kp", "sn"})


def _check_types(section: str, params: Mapping, source: str) -> None:
    """Refuse null or wrongly-typed values of the known keys of one YAML section.

    Integers must be YAML integers (not ``"8"``, ``8.0`` or ``true``), floats numbers, flags booleans;
    ``scales`` a list of numbers.

    Raises:
        ConfigError: naming the section, every bad key and its value.
    """
    problems = []
    for key, value in params.items():
        kind = ("an integer" if key in _INT_KEYS else "a number" if key in _FLOAT_KEYS
                else "true or false" if key in _BOOL_KEYS else "a list of numbers" if key == "scales" else None)
        if kind is None or isinstance(value, Mapping):
            continue
        if value is None:
            problems.append(f"{key} is null (expected {kind})")
            continue
        if key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key in _FLOAT_KEYS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif key in _BOOL_KEYS:
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            what = "non-numeric" if key in _INT_KEYS | _FLOAT_KEYS else "of the wrong type"
            problems.append(f"{key}={value!r} is {what} ({type(value).__name__}; expected {kind})")
    if problems:
        raise ConfigError(f"{source}: {section}: " + "; ".join(problems))


@dataclass(frozen=True)
class FOMMConfig:
    """FOMM architecture settings (the YAML's ``model_params`` + ``dataset_params.frame_shape``).

    Attributes:
        frame_shape: ``(H, W, C)`` of the frames the model renders, pixels; ``H == W``.
        common_params: ``num_kp``, ``num_channels``, ``estimate_jacobian``.
        kp_detector_params: :class:`~talkhead.fomm.KPDetector` arguments.
        generator_params: :class:`~talkhead.fomm.OcclusionAwareGenerator` arguments, with the nested
            ``dense_motion_params``.
        discriminator_params: :class:`~talkhead.fomm.MultiScaleDiscriminator` arguments, or ``None``
            when the YAML has none (inference does not need the discriminator).
        origin: where the settings came from (a path, or ``"<dict>"``), quoted in error messages.
    """

    frame_shape: tuple[int, int, int]
    common_params: dict = field(default_factory=dict)
    kp_detector_params: dict = field(default_factory=dict)
    generator_params: dict = field(default_factory=dict)
    discriminator_params: Optional[dict] = None
    origin: str = "<dict>"

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "FOMMConfig":
        """Read and validate a YAML config in the official schema.

        Raises:
            ConfigError: unreadable file, invalid YAML, missing sections/keys (named in the message),
                unknown keys, or sizes the networks cannot handle.
        """
        from ..io import read_yaml_config

        return cls.from_dict(read_yaml_config(path, "FOMM config"), origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<dict>") -> "FOMMConfig":
        """Validate a parsed config (the YAML as a dict). See :meth:`from_yaml` for the errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: a FOMM config must be a mapping, not {type(data).__name__}")
        model = data.get("model_params")
        dataset = data.get("dataset_params")
        missing = []
        if not isinstance(dataset, Mapping) or "frame_shape" not in dataset:
            missing.append("dataset_params.frame_shape")
        if not isinstance(model, Mapping):
            missing.append("model_params")
            model = {}
        for name in ("common_params", "kp_detector_params", "generator_params"):
            if not isinstance(model.get(name), Mapping):
                missing.append(f"model_params.{name}")
        gen = model.get("generator_params")
        if isinstance(gen, Mapping) and not isinstance(gen.get("dense_motion_params"), Mapping):
            missing.append("model_params.generator_params.dense_motion_params")
        if missing:
            raise ConfigError(f"{origin}: FOMM config lacks section(s): {', '.join(missing)}")
        disc = model.get("discriminator_params")
        if disc is not None and not isinstance(disc, Mapping):
            raise ConfigError(f"{origin}: model_params.discriminator_params must be a mapping")

        shape = dataset["frame_shape"]
        try:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
                raise TypeError("frame_shape entries must be integers")
            shape = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: dataset_params.frame_shape must be [H, W, C], not {shape!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"{origin}: dataset_params.frame_shape must be [H, W, C], not {list(shape)}")
        if shape[0] != shape[1]:
            raise ConfigError(f"{origin}: FOMM frames must be square, frame_shape is {list(shape)}")

        config = cls(frame_shape=shape,
                     common_params=copy.deepcopy(dict(model["common_params"])),
                     kp_detector_params=copy.deepcopy(dict(model["kp_detector_params"])),
                     generator_params=copy.deepcopy(dict(model["generator_params"])),
                     discriminator_params=copy.deepcopy(dict(disc)) if disc is not None else None,
                     origin=origin)
        config.validate()
        return config

    # -- derived values -----------------------------------------------------------------------------
    @property
    def frame_size(self) -> int:
        """Side of the square frames, pixels (``frame_shape[0]``; 256 for vox-adv-256)."""
        return int(self.frame_shape[0])

    @property
    def num_kp(self) -> int:
        """Number of keypoints ``K`` (10 for vox-adv)."""
        return int(self.common_params["num_kp"])

    @property
    def num_channels(self) -> int:
        """Image channels (3)."""
        return int(self.common_params["num_channels"])

    @property
    def estimate_jacobian(self) -> bool:
        """Whether keypoints carry 2x2 jacobians."""
        return bool(self.common_params.get("estimate_jacobian", False))

    def validate(self) -> None:
        """Check keys and sizes.

        Raises:
            ConfigError: missing/unknown keys in a section, a null or wrongly-typed value (an integer
                written as a string, ...), a scale factor that is not ``1/n``, a frame
                size not divisible as the hourglasses and the generator encoder need, or frames or
                networks beyond :data:`SIZE_MULTIPLE` times the published model's.
        """
        src = self.origin
        common = set(self.common_params)
        for section, params in (("model_params.common_params", self.common_params),
                                ("model_params.kp_detector_params", self.kp_detector_params),
                                ("model_params.generator_params", self.generator_params),
                                ("model_params.generator_params.dense_motion_params",
                                 self.generator_params.get("dense_motion_params") or {}),
                                ("model_params.discriminator_params", self.discriminator_params or {})):
            _check_types(section, params, src)
        _check_section("model_params.common_params", self.common_params, _CommonParams, set(), src)
        _check_section("model_params.kp_detector_params", self.kp_detector_params, KPDetector, common, src)
        gen = {k: v for k, v in self.generator_params.items() if k != "dense_motion_params"}
        _check_section("model_params.generator_params", {**gen, "dense_motion_params": {}},
                       OcclusionAwareGenerator, common, src)
        dm = self.generator_params["dense_motion_params"]
        _check_section("model_params.generator_params.dense_motion_params", dm, DenseMotionNetwork,
                       {"num_kp", "num_channels", "estimate_occlusion_map"}, src)
        if "num_kp" in dm or "num_channels" in dm or "estimate_occlusion_map" in dm:
            raise ConfigError(f"{src}: dense_motion_params may not set num_kp, num_channels or "
                              "estimate_occlusion_map (they come from common/generator params)")
        if self.discriminator_params is not None:
            disc = {k: v for k, v in self.discriminator_params.items() if k != "scales"}
            # the reference Discriminator swallows unknown keyword arguments, so only required ones are checked
            _check_section("model_params.discriminator_params", disc, Discriminator, common, src, strict=False)

        try:
            self._validate_sizes(dm)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"{src}: non-numeric size setting ({exc!r})") from None

    def _validate_sizes(self, dm: Mapping) -> None:
        src = self.origin
        size = self.frame_size
        if self.frame_shape[2] != self.num_channels:
            raise ConfigError(f"{src}: frame_shape has {self.frame_shape[2]} channels but num_channels is "
                              f"{self.num_channels}")
        for section, params in (("kp_detector_params", self.kp_detector_params),
                                ("generator_params.dense_motion_params", dm)):
            scale = float(params.get("scale_factor", 1))
            if not check_scale(scale):
                raise ConfigError(f"{src}: {section}.scale_factor must be 1/n for an integer n, not {scale}")
            inner = -(-size // round(1 / scale))  # ceil(size * scale): the anti-alias output size
            levels = 2 ** int(params["num_blocks"])
            if inner % levels:
                raise ConfigError(
                    f"{src}: frame size {size} px x {section}.scale_factor {scale} = {inner} px is not "
                    f"divisible by 2**num_blocks = {levels} (hourglass skip connections would not align)")
            if section == "kp_detector_params" and inner - 6 + 2 * int(params.get("pad", 0)) < 1:
                raise ConfigError(f"{src}: frame size {size} px is too small for the 7x7 keypoint head")
        downs = 2 ** int(self.generator_params["num_down_blocks"])
        if size % downs:
            raise ConfigError(f"{src}: frame size {size} px is not divisible by 2**num_down_blocks = {downs}")
        self._validate_scale()

    def _validate_scale(self) -> None:
        """Frame side and parameter count within :data:`SIZE_MULTIPLE` times the published model's
        (the networks are counted on the ``meta`` device: nothing is allocated)."""
        src = self.origin
        if self.frame_size > SIZE_MULTIPLE * PUBLISHED_FRAME_SIZE:
            raise ConfigError(f"{src}: frame_shape {list(self.frame_shape)} is larger than talkhead renders (at most "
                              f"{SIZE_MULTIPLE * PUBLISHED_FRAME_SIZE} px, {SIZE_MULTIPLE}x the published "
                              f"{PUBLISHED_FRAME_SIZE} px)")
        import torch

        with torch.device("meta"):
            count = sum(p.numel() for net in (self.build_kp_detector(), self.build_generator())
                        for p in net.parameters())
        if count > SIZE_MULTIPLE * PUBLISHED_PARAMETERS:
            raise ConfigError(f"{src}: the keypoint detector and generator it describes have {count / 1e6:.0f} M "
                              f"parameters, more than talkhead accepts ({SIZE_MULTIPLE}x the published "
                              f"{PUBLISHED_PARAMETERS / 1e6:.0f} M; check block_expansion and max_features)")

    # -- builders -----------------------------------------------------------------------------------
    def build_kp_detector(self) -> KPDetector:
        """``KPDetector(**kp_detector_params, **common_params)``, freshly initialised."""
        return KPDetector(**self.kp_detector_params, **self.common_params)

    def build_generator(self, align_corners: bool = True) -> OcclusionAwareGenerator:
        """``OcclusionAwareGenerator(**generator_params, **common_params)`` with the given grid convention."""
        params = copy.deepcopy(self.generator_params)
        return OcclusionAwareGenerator(**params, **self.common_params, align_corners=align_corners)

    def build_discriminator(self) -> MultiScaleDiscriminator:
        """``MultiScaleDiscriminator(**discriminator_params, **common_params)``.

        Public API for training code (see :mod:`talkhead.fomm.discriminator`); not used by the CLI
        or inference.

        Raises:
            ConfigError: the config has no ``discriminator_params``.
        """
        if self.discriminator_params is None:
            raise ConfigError(f"{self.origin}: FOMM config lacks section(s): model_params.discriminator_params")
        return MultiScaleDiscriminator(**self.discriminator_params, **self.common_params)


class _CommonParams:
    """Signature holder for ``model_params.common_params`` validation."""

    def __init__(self, num_kp: int, num_channels: int, estimate_jacobian: bool = False):  # pragma: no cover
        pass
