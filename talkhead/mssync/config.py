"""MS-Sync model configuration, read from (and written back to) the released ``args`` JSON file.

The released MS-Sync model directory holds ``args``, one line of JSON written by the reference
``train.py`` as ``json.dump(args.__dict__, f)`` (its argparse namespace), next to ``model_chkpt.pt``.
The reference ``execute_model.load_model`` copies every item onto a ``nets.utils.Config()`` whose
defaults silently fill any missing key. :class:`MSSyncConfig` instead requires every key the
generator's architecture depends on and raises :class:`~talkhead.errors.ConfigError` naming all
missing ones; unknown extra keys (training options, paths, ...) are kept untouched so that
:meth:`MSSyncConfig.to_args_dict` writes the file back in the same key order.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..constants import NUM_KP
from ..errors import CheckpointError, ConfigError
from ..keypoints import FOMM_SPACE, KeypointSpace

ARGS_NAME = "args"
"""File name of the config in a released MS-Sync model directory (one line of JSON, see the module docstring)."""

CHECKPOINT_NAME = "model_chkpt.pt"
"""File name of the checkpoint in a released MS-Sync model directory (``{'checkpoints': generator state
dict, ...}``)."""

MSSYNC_DIRNAME = "mssync"
"""Sub-folder holding an MS-Sync model directory: in the models folder (the downloaded one) and in a
``train generator`` run folder (``RUN_DIR/mssync``, see :func:`talkhead.mssync.resolve_model_dir`)."""

DEEP_MLP_LAYERS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "4": (4,),
    "6": (1, 1, 1, 1, 1, 1),
    "7": (1, 2, 2, 2),
    "8": (2, 2, 2, 2),
    "10": (1, 3, 3, 3),
    "16": (3, 4, 6, 3),
})
"""Blocks per stage of the multi-scale ``DeepMLP`` nets, keyed by ``str(nblocks_do)``.

Reference: ``nets/networks.py`` ``deep_mlp_layers``. The generator's backbone (``deep_output``)
uses all stages but the last; ``mask``/``leaf`` use the last stage only. The discriminator's
frame classifier uses ``DEEP_MLP_LAYERS[str(nblocks_frame_D)]``.
"""

DISCRIMINATOR_WINDOWS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "1": (5, 10, 20, 40),
    "2": (3, 5, 8, 10, 13, 20, 26, 40),
})
"""Window lengths (frames at 25 fps) of the multi-scale sequence discriminator, keyed by
``str(dis_config)``. Reference: ``nets/networks.py`` ``windows``."""

MERGING_ACTIVATIONS = ("softmax", "sigmoid")
"""Allowed ``streams_merging_activation`` values: softmax over the 5 streams (paper eq. 8) or an
independent sigmoid gate per stream (the reference's ``else`` branch)."""

GENERATOR_KEYS: tuple[str, ...] = (
    "data_dim", "obs_len", "audio_dim", "coord_dim", "hidden_size", "nblocks_do",
    "expansion_fact_do", "pyramid_layers_g", "nheads_tf", "nlayers_tf",
    "streams_merging_activation",
)
"""``args`` keys the generator (``DynamicalModel``) and its inference procedure need; each is
required by :meth:`MSSyncConfig.from_dict`."""

SPACE_KEYS: tuple[str, ...] = ("num_kp", "keypoint_space")
"""``args`` keys naming the keypoint space a model generates (:class:`~talkhead.keypoints.KeypointSpace`:
``num_kp`` keypoints of the renderer ``keypoint_space``, with jacobians when ``data_dim`` is 6). Optional:
the released ``args`` has neither, and means FOMM's 10 keypoints (``num_kp`` 10, ``keypoint_space``
``"fomm"``); ``train generator`` writes both, from its data."""

DISCRIMINATOR_KEYS: tuple[str, ...] = (
    "coord_dim_D", "nblocks_frame_D", "dis_config", "hidden_size_D", "seq_stream_weight",
    "frame_weight",
)
"""``args`` keys only the training discriminator needs; optional in ``args`` (``None`` when
absent) and checked by :meth:`MSSyncConfig.require_discriminator`."""

_DEFAULT_ARGS: Mapping[str, Any] = MappingProxyType({
    "data_dir": "vox/train", "out_dir": None, "lip_syncer": "info", "lip_syncer_metrics": "syncnet",
    "lip_syncer_path": "lip_syncer", "keypoints": True, "data_dim": 6, "obs_len": 3, "smooth": False,
    "fomm_confp": "fomm_models/vox-adv-256.yaml", "fomm_chkptp": "fomm_models/vox-adv-cpk.pth.tar",
    "expansion_fact_do": 4, "nblocks_do": 4, "nblocks_frame_D": 4, "audio_dim": 512, "coord_dim": 512,
    "coord_dim_D": 512, "audio_fpn": False, "fpn_inner_dim": 0, "streams_merging_activation": "softmax",
    "in_dim_coord_do": 256, "hidden_size": 64, "hidden_size_D": 1024, "hidden_size_Dvis": 2048,
    "seq_len": 40, "nlayers_tf": 1, "nheads_tf": 1, "pyramid_layers_g": 4, "adv_loss_weight": 1.0,
    "sup_loss_weight": 0.01, "reco_loss_weight": 0.001, "rigid_loss_weight": 1.0,
    "rigid_loss_type": "init", "lip_loss_weight": 1.0, "seq_stream_weight": 1.0, "frame_weight": 1.0,
    "syncer_pyramid": False, "pyramid_style": "1", "syncer_pyramid_kernel": 7, "loss_pyramid_kernel": 7,
    "vis_loss_weight": 0.0, "vis_loss_step": 0, "first_order_loss_weight": 0, "dis_config": 1,
    "dis_type": 1, "nlayers_D": 1, "nheads_D": 1, "n_epochs": 600, "batch_size": 50,
    "learning_rate_g": 2e-05, "learning_rate_d": 1e-05, "adam_beta_1": 0, "lr_type": "step_lr",
    "gamma_lr": 1.0, "step_iter_lr": 2000, "gamma_lr_D": 1.0, "step_iter_lr_D": 500,
    "distributed": False,
})
# The ``args`` a default reference training run writes (``train.py --keypoints True --data_dim 6``,
# every other option at its ``nets/utils.py`` ``Config`` default; ``out_dir`` unset).

ARGS_MAX_BYTES = 1 << 20
"""Largest ``args`` file read, bytes (the released one is 1.3 KB): a bigger file is refused unread."""

MAX_SIZES: Mapping[str, int] = MappingProxyType({
    "data_dim": 6, "obs_len": 100, "audio_dim": 4096, "coord_dim": 4096, "hidden_size": 512,
    "expansion_fact_do": 32, "pyramid_layers_g": 4, "nheads_tf": 64, "nlayers_tf": 16, "coord_dim_D": 4096,
    "hidden_size_D": 8192, "num_kp": 128,
})
"""Largest accepted value of each integer ``args`` key: 8x the published model's widths (``audio_dim``,
``coord_dim``, ``coord_dim_D`` 512, ``hidden_size`` 64, ``hidden_size_D`` 1024, ``expansion_fact_do`` 4),
16 transformer layers, 64 heads, ``data_dim`` at most 6 (x, y and a 2x2 jacobian), at most 128 keypoints and a warm-up
``obs_len`` of at most 100 frames (4 s; published: 3). Beyond, building the network alone would cost
gigabytes (or overflow), and the value is refused as a config error naming ``args`` and the key."""

_INT_KEYS = ("data_dim", "obs_len", "audio_dim", "coord_dim", "hidden_size", "expansion_fact_do",
             "pyramid_layers_g", "nheads_tf", "nlayers_tf", "coord_dim_D", "nblocks_frame_D",
             "dis_config", "hidden_size_D", "num_kp")


def resolve_model_dir(path: str | Path) -> Path:
    """The MS-Sync model directory (``args`` + ``model_chkpt.pt``) a user points at: ``path`` itself, or,
    for a ``train generator`` run folder, its :data:`MSSYNC_DIRNAME` sub-folder (``RUN_DIR/mssync``).

    ``path`` is taken as it is when it holds ``args`` or ``model_chkpt.pt`` (so a half-copied model is
    reported by name where it is loaded), else ``path/mssync`` when that holds ``args``.

    Raises:
        CheckpointError: ``path`` is not a directory.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"MS-Sync model directory not found: {path} (expected a folder with {ARGS_NAME} and "
                              f"{CHECKPOINT_NAME}, or a `talkhead train generator` run folder)")
    if (path / ARGS_NAME).exists() or (path / CHECKPOINT_NAME).exists():
        return path
    if (path / MSSYNC_DIRNAME / ARGS_NAME).is_file():
        return path / MSSYNC_DIRNAME
    return path


def _as_int(value: Any) -> int | None:
    """``value`` if it is a JSON integer (an ``int``, not a bool), else None. Numbers written as
    strings (``"8"``) or floats are refused: ``train.py`` writes argparse ``int`` options as ints."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 5000-digit integer is shown by its length)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_problems(args: Mapping[str, Any]) -> list[str]:
    """Null or wrongly-typed values of the keys MSSyncConfig reads, one message per key."""
    problems = []
    for key in GENERATOR_KEYS + SPACE_KEYS + DISCRIMINATOR_KEYS:
        if key not in args:
            continue
        value = args[key]
        if key in GENERATOR_KEYS and value is None:
            problems.append(f"key {key!r} is null")
        elif value is None:
            continue
        elif key == "keypoint_space":
            if not isinstance(value, str) or not value:
                problems.append(f"key {key!r} = {_short(value)} is not a renderer name (expected a string such as 'fomm')")
        elif key == "nblocks_do":  # the reference looks it up as a string: "4" and 4 are both valid
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                problems.append(f"key {key!r} = {_short(value)} is a {type(value).__name__} (expected an integer)")
        elif key == "streams_merging_activation":
            if not isinstance(value, str):
                problems.append(f"key {key!r} = {_short(value)} is a {type(value).__name__} (expected a string)")
        elif key in ("seq_stream_weight", "frame_weight"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"key {key!r} = {_short(value)} is a {type(value).__name__} (expected a number)")
        elif _as_int(value) is None:
            problems.append(f"key {key!r} = {_short(value)} is a {type(value).__name__} (expected an integer)")
    return problems


@dataclass(frozen=True)
class MSSyncConfig:
    """Hyper-parameters of the MS-Sync generator (and its training discriminator).

    Field meanings (reference ``nets/networks.py``/``nets/resnet.py``; widths are features):

    - ``data_dim``: numbers per keypoint, 6 = ``[x, y, j00, j01, j10, j11]`` (2 without jacobians).
    - ``num_kp``: keypoints per frame (the reference's hard-coded ``KEYPOINTS_DIM`` = 10; ``args`` key
      ``num_kp``, 10 when absent), and ``keypoint_space``: the renderer whose keypoints they are
      (``"fomm"`` when absent); together with ``data_dim`` they are :attr:`space`. Every layer whose
      width depends on the keypoints (the keypoint encoder's input, the masks, leaves and velocity)
      follows them; the hidden widths 272/1088 (:data:`~talkhead.mssync.generator.ENCODER_WIDTH`) do not.
    - ``obs_len``: warm-up length, frames at 25 fps (kp0 is repeated ``obs_len`` times).
    - ``audio_dim``: width of every level of the audio feature pyramid (not the input width: the
      input is always the 26-band logfbank).
    - ``coord_dim``: output width of the keypoint encoder ``encoder_x`` = ``d_model`` of the
      temporal transformer.
    - ``hidden_size``: output width of ``lin_out`` (the temporal module's projection).
    - ``nblocks_do``: key of :data:`DEEP_MLP_LAYERS` for the multi-scale DeepMLP nets.
    - ``expansion_fact_do``: inverted-residual expansion factor of those nets.
    - ``pyramid_layers_g``: number of pyramid levels/groups; must be 4 (the audio pyramid is
      hard-wired to 4 levels).
    - ``nheads_tf``/``nlayers_tf``: transformer heads/layers (``dim_feedforward`` is 1024).
    - ``streams_merging_activation``: ``"softmax"`` (paper eq. 8) or ``"sigmoid"``.
    - discriminator: ``coord_dim_D``, ``nblocks_frame_D``, ``dis_config`` (window set),
      ``hidden_size_D`` (LSTM width), ``seq_stream_weight``/``frame_weight`` (adversarial term
      weights); ``None`` when the ``args`` lacks them.
    - ``args``: the whole source ``args`` mapping (read-only), kept for :meth:`to_args_dict`.

    Build it with :meth:`from_args_file`, :meth:`from_dict` or :meth:`default`;
    ``dataclasses.replace`` gives variants (validated again).

    Raises:
        ConfigError: a bad value (non-positive width, a size beyond :data:`MAX_SIZES`, ``pyramid_layers_g != 4``, unknown
            ``nblocks_do``, ``coord_dim`` not divisible by ``nheads_tf``, unknown activation).
    """

    data_dim: int
    obs_len: int
    audio_dim: int
    coord_dim: int
    hidden_size: int
    nblocks_do: int
    expansion_fact_do: int
    pyramid_layers_g: int
    nheads_tf: int
    nlayers_tf: int
    streams_merging_activation: str
    coord_dim_D: int | None = None
    nblocks_frame_D: int | None = None
    dis_config: int | None = None
    hidden_size_D: int | None = None
    seq_stream_weight: float | None = None
    frame_weight: float | None = None
    num_kp: int = NUM_KP
    keypoint_space: str = FOMM_SPACE.renderer
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False,
                                    compare=False, hash=False)

    def __post_init__(self) -> None:
        problems = []
        for key in _INT_KEYS:
            value = getattr(self, key)
            if value is None:
                if key in GENERATOR_KEYS:
                    problems.append(f"{key}=None (expected a positive integer)")
                continue
            as_int = _as_int(value)
            if as_int is None or as_int < 1:
                problems.append(f"{key}={_short(value)} (expected a positive integer)")
            elif key in MAX_SIZES and as_int > MAX_SIZES[key]:
                problems.append(f"{key}={_short(value)} is larger than talkhead accepts (at most {MAX_SIZES[key]})")
            else:
                object.__setattr__(self, key, as_int)
        nblocks = self.nblocks_do if isinstance(self.nblocks_do, int) and not isinstance(self.nblocks_do, bool) \
            else int(self.nblocks_do) if isinstance(self.nblocks_do, str) and self.nblocks_do.strip().isdigit() else None
        if nblocks is None or str(nblocks) not in DEEP_MLP_LAYERS:
            problems.append(f"nblocks_do={self.nblocks_do!r} (expected one of {', '.join(DEEP_MLP_LAYERS)})")
        else:
            object.__setattr__(self, "nblocks_do", nblocks)
        if self.nblocks_frame_D is not None and str(self.nblocks_frame_D) not in DEEP_MLP_LAYERS:
            problems.append(f"nblocks_frame_D={self.nblocks_frame_D!r} (expected one of {', '.join(DEEP_MLP_LAYERS)})")
        if self.dis_config is not None and str(self.dis_config) not in DISCRIMINATOR_WINDOWS:
            problems.append(f"dis_config={self.dis_config!r} (expected one of {', '.join(DISCRIMINATOR_WINDOWS)})")
        if self.pyramid_layers_g != 4:
            problems.append(f"pyramid_layers_g={self.pyramid_layers_g!r} (the MS-Sync audio pyramid has "
                            "exactly 4 levels, so it must be 4)")
        if self.streams_merging_activation not in MERGING_ACTIVATIONS:
            problems.append(f"streams_merging_activation={self.streams_merging_activation!r} "
                            f"(expected one of {', '.join(MERGING_ACTIVATIONS)})")
        if isinstance(self.coord_dim, int) and isinstance(self.nheads_tf, int) and self.nheads_tf > 0 \
                and self.coord_dim % self.nheads_tf:
            problems.append(f"coord_dim={self.coord_dim} is not divisible by nheads_tf={self.nheads_tf}")
        if not isinstance(self.keypoint_space, str) or not self.keypoint_space:
            problems.append(f"keypoint_space={self.keypoint_space!r} (expected a renderer name such as 'fomm')")
        if problems:
            raise ConfigError("invalid MS-Sync config: " + "; ".join(problems))
        if not isinstance(self.args, MappingProxyType):
            object.__setattr__(self, "args", MappingProxyType(dict(self.args)))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, args: Mapping[str, Any], *, source: str = "MS-Sync args") -> "MSSyncConfig":
        """Config from a released-format ``args`` mapping (the parsed JSON).

        Every key of :data:`GENERATOR_KEYS` is required (the reference would silently fall back
        to ``Config()`` defaults such as ``data_dim=2``); discriminator keys are optional; other
        keys are kept verbatim in ``.args``.

        Args:
            args: the ``args`` dict.
            source: what to call it in error messages (e.g. the file path).

        Raises:
            ConfigError: ``args`` is not a mapping, lacks keys (all missing keys are named), holds
                a null or wrongly-typed value (each key is named; numbers written as strings are
                refused, except ``nblocks_do``, which the reference looks up as a string), or bad values.
        """
        if not isinstance(args, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(args).__name__}")
        missing = [k for k in GENERATOR_KEYS if k not in args]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)} needed by the MS-Sync generator")
        problems = _type_problems(args)
        if problems:
            raise ConfigError(f"{source}: invalid MS-Sync args: " + "; ".join(problems))
        values = {k: args[k] for k in GENERATOR_KEYS}
        values.update({k: args[k] for k in SPACE_KEYS + DISCRIMINATOR_KEYS if k in args and args[k] is not None})
        try:
            return cls(**values, args=MappingProxyType(dict(args)))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_args_file(cls, path: str | Path) -> "MSSyncConfig":
        """Config from a released ``args`` file (one JSON object).

        Raises:
            ConfigError: the file is missing, unreadable, larger than :data:`ARGS_MAX_BYTES`, not
                JSON (also: an integer beyond Python's 4300 digits, nesting too deep), or fails
                :meth:`from_dict`; the message names the file.
        """
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > ARGS_MAX_BYTES:
                raise ConfigError(f"MS-Sync args file {path} is {size} bytes, not a config (at most "
                                  f"{ARGS_MAX_BYTES} bytes; the released one is 1.3 KB)")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"MS-Sync args file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read MS-Sync args file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"MS-Sync args file {path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(f"MS-Sync args file {path} is not a config: its JSON is nested too deeply") from None
        except ValueError as exc:  # an integer beyond Python's 4300-digit limit
            why = "it holds a number of thousands of digits" if "digits" in str(exc) else \
                (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise ConfigError(f"MS-Sync args file {path} is not a config: {why}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def default(cls) -> "MSSyncConfig":
        """The paper/training defaults: the ``args`` of a default reference training run.

        ``audio_dim = coord_dim = 512``, ``hidden_size 64``, ``nblocks_do 4``, ``expansion_fact_do 4``,
        ``obs_len 3``, ``data_dim 6``; discriminator ``coord_dim_D 512``, ``hidden_size_D 1024``,
        ``dis_config 1``. A generator built from it has 35,410,254 parameters.
        """
        return cls.from_dict(_DEFAULT_ARGS, source="default MS-Sync args")

    # -- export ---------------------------------------------------------------------------------
    def to_args_dict(self) -> dict[str, Any]:
        """The released ``args`` JSON object: the source mapping with this config's values.

        Keys keep their source order (for :meth:`default`, ``train.py``'s argparse order); fields
        that are ``None`` are left out, and so are the keypoint-space keys (:data:`SPACE_KEYS`) of a
        FOMM-space model whose source lacked them (the released ``args`` round-trips unchanged).
        ``json.dumps`` of it is what ``train.py`` writes.
        """
        out = dict(self.args)
        for f in dataclasses.fields(self):
            if f.name == "args":
                continue
            value = getattr(self, f.name)
            if f.name in SPACE_KEYS and f.name not in self.args and value == f.default:
                continue
            if value is not None:
                out[f.name] = value
        return out

    def to_args_file(self, path: str | Path) -> None:
        """Write :meth:`to_args_dict` as one line of JSON (the reference ``args`` format)."""
        Path(path).write_text(json.dumps(self.to_args_dict()), encoding="utf-8")

    # -- derived --------------------------------------------------------------------------------
    @property
    def space(self) -> KeypointSpace:
        """The keypoint space the model generates: ``keypoint_space``'s ``num_kp`` keypoints, with
        jacobians when ``data_dim`` is 6 (:data:`talkhead.keypoints.FOMM_SPACE` for the released model).

        Raises:
            ConfigError: ``data_dim`` is neither 2 nor 6.
        """
        try:
            return KeypointSpace.from_kp_dim(self.keypoint_space, self.num_kp, self.data_dim)
        except ValueError as exc:  # a data_dim that is neither 2 (points) nor 6 (points + jacobians)
            raise ConfigError(f"MS-Sync args: {exc}") from None

    @property
    def frame_dim(self) -> int:
        """Numbers per generated frame: ``num_kp * data_dim`` (60 for the released model)."""
        return self.num_kp * self.data_dim

    @property
    def deep_mlp_layers(self) -> tuple[int, ...]:
        """``DEEP_MLP_LAYERS[str(nblocks_do)]`` (the reference looks ``nblocks_do`` up as a string)."""
        return DEEP_MLP_LAYERS[str(self.nblocks_do)]

    def require_discriminator(self) -> None:
        """Check that the discriminator keys are present.

        Raises:
            ConfigError: naming every missing discriminator key.
        """
        missing = [k for k in DISCRIMINATOR_KEYS if getattr(self, k) is None]
        if missing:
            raise ConfigError(f"MS-Sync config lacks discriminator key(s) {', '.join(missing)}")
