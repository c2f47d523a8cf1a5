"""The renderer seam: what the pipeline needs from a renderer, and the registry of the ones we ship.

A renderer turns one source face crop and keypoint sets into frames. FOMM is the one that ships; a
second one (e.g. SMAC) plugs in with one module implementing :class:`Renderer` and one
:func:`register_renderer` entry, without touching the pipeline (diffusers passes its vae/unet the same
way). The motion generator seam (:class:`MotionGenerator`) is its audio-side counterpart.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol, runtime_checkable

from .errors import InputError
from .progress import Progress

if TYPE_CHECKING:  # annotations only: importing the registry imports no torch
    import torch

    from .keypoints import Keypoints
    from .rendering import SourceEncoding
    from .store import ModelSpec


@runtime_checkable
class Renderer(Protocol):
    """A keypoint-driven face renderer (:class:`talkhead.fomm.FOMM`, :class:`talkhead.smac.SMAC`; their
    common base is :class:`talkhead.rendering.KeypointRenderer`, which a renderer need not inherit).

    Use: encode the source once, then render as many driving batches as needed from that encoding::

        encoding = renderer.encode_source(source)          # detects kp_source unless given
        for kp_driving in batches:
            frames = renderer.render(encoding, kp_driving)

    A renderer keeps no per-source state: the caller holds the encoding (valid for the renderer that
    made it, while its weights are unchanged).

    Attributes:
        frame_size: side ``S`` of the square crops it takes and renders, pixels.
        device: the :class:`torch.device` its inputs are moved to and its outputs live on.
    """

    frame_size: int
    device: torch.device

    def detect(self, images) -> Keypoints:
        """Images ``(B, 3, S, S)`` float in [0, 1] -> :class:`~talkhead.keypoints.Keypoints` ``(B, K, ...)``
        on ``device``, values in ``[-1, 1]`` (x = column, y = row)."""

    def encode_source(self, source, kp_source: Optional[Keypoints] = None) -> SourceEncoding:
        """One source image ``(1, 3, S, S)`` float in [0, 1] -> :class:`~talkhead.rendering.SourceEncoding`
        with ``kp_source`` ``(1, K, ...)`` (the given keypoints, else :meth:`detect`'s) and the
        renderer's own per-source features."""

    def render(self, encoding, kp_driving) -> torch.Tensor:
        """:meth:`encode_source`'s encoding + kp_driving ``(b, K, ...)`` -> frames ``(b, 3, S, S)`` float in
        [0, 1] on ``device``; a driving set's frame does not depend on the batch it comes in."""


@runtime_checkable
class MotionGenerator(Protocol):
    """Speech -> driving keypoints (MS-Sync's interface: :class:`talkhead.mssync.MSSyncMotion`)."""

    def __call__(self, kp_source, logfbank, progress: Optional[Progress] = None):
        """kp_source ``(1, K, ...)`` + logfbank ``(M, 26)`` at 100 Hz -> kp_driving ``(T, K, ...)`` at 25 fps;
        ``progress("keypoints", done, total)`` in frames."""


@dataclass(frozen=True)
class RendererEntry:
    """One registered renderer.

    Attributes:
        name: the ``--renderer`` value.
        summary: one line for ``--help`` and ``doctor``.
        num_kp: keypoints per set in its motion space (FOMM vox-adv: 10).
        store_names: the checkpoint-store model names its files belong to (``talkhead download NAME``).
            The files are located with :func:`talkhead.store.model_file` / :func:`talkhead.store.model_dir`.
        load: ``load(models_dir: Path, device: torch.device, options) -> Renderer`` (files already ensured).
        frame_size: ``frame_size(models_dir) -> int``, the crop side in pixels, read from config without
            loading any checkpoint (so inputs can be cropped and checked before models load).
        audio_driven: whether the released MS-Sync generator drives it (it takes FOMM's keypoint space);
            another renderer is driven by speech through an MS-Sync trained in its own space (``animate
            --motion-model``; README, "Training MS-Sync for another renderer"). See :attr:`space`.
        licence: a short licence note (shown where it restricts use).
        models: store models this renderer brings (:class:`talkhead.store.ModelSpec`, each named in
            ``store_names``): :func:`register_renderer` registers them with the store, so a new
            renderer is one module and this one entry; the built-in models need none.
    """

    name: str
    summary: str
    num_kp: int
    store_names: tuple[str, ...]
    load: Callable[[Path, object, object], Renderer]
    frame_size: Callable[[Optional[Path]], int] = lambda models_dir: 256
    audio_driven: bool = True
    licence: str = ""
    models: tuple["ModelSpec", ...] = ()

    @property
    def space(self):
        """The :class:`~talkhead.keypoints.KeypointSpace` its keypoints live in: FOMM's (the released
        MS-Sync's) for an audio-driven 10-keypoint renderer, else its own (``name``, ``num_kp``, with
        jacobians). What ``preprocess --renderer`` records and what an MS-Sync must generate to drive it."""
        from .keypoints import FOMM_SPACE, KeypointSpace

        if self.audio_driven and self.num_kp == FOMM_SPACE.num_kp:
            return FOMM_SPACE
        return KeypointSpace(self.name, self.num_kp, True)


_RENDERERS: dict[str, RendererEntry] = {}


def register_renderer(entry: RendererEntry) -> RendererEntry:
    """Add (or replace) a renderer under ``entry.name``, with the store models it brings
    (``entry.models``, :func:`talkhead.store.register_model`; a replaced entry's own models are
    unregistered first).

    Raises:
        ValueError: a model in ``entry.models`` is not named in ``entry.store_names``, or another
            model of its name is registered.
    """
    stray = [m.name for m in entry.models if m.name not in entry.store_names]
    if stray:
        raise ValueError(f"renderer {entry.name!r} brings model(s) {', '.join(stray)} not in its store_names")
    old = _RENDERERS.get(entry.name)
    _swap_models(old.models if old is not None else (), entry.models)
    _RENDERERS[entry.name] = entry
    return entry


def unregister_renderer(name: str) -> RendererEntry:
    """Remove renderer ``name`` and the store models it brought (files on disk are left alone).

    Raises:
        InputError: no renderer of that name.
    """
    entry = get_renderer(name)
    _swap_models(entry.models, ())
    del _RENDERERS[name]
    return entry


def _swap_models(old: tuple["ModelSpec", ...], new: tuple["ModelSpec", ...]) -> None:
    """Unregister the store models ``old`` and register ``new``; on a conflict nothing changes."""
    if not old and not new:
        return
    from .store import REGISTRY, register_model, unregister_model

    for spec in old:
        unregister_model(spec.name)
    added = []
    try:
        for spec in new:
            if spec.name not in REGISTRY:
                added.append(spec)
            register_model(spec)
    except ValueError:
        for spec in added:
            unregister_model(spec.name)
        for spec in old:
            register_model(spec)
        raise


def renderer_names() -> tuple[str, ...]:
    return tuple(_RENDERERS)


def get_renderer(name: str) -> RendererEntry:
    """The registered renderer ``name``.

    Raises:
        InputError: no renderer of that name (the known ones are listed).
    """
    try:
        return _RENDERERS[name]
    except KeyError:
        raise InputError(f"--renderer must be one of {', '.join(_RENDERERS)}, not {name!r}") from None


def _load_fomm(models_dir: Path, device, options) -> Renderer:
    from .fomm import load_fomm
    from .store import model_file

    return load_fomm(model_file(models_dir, "fomm", "config"), model_file(models_dir, "fomm", "checkpoint"),
                     device=device, align_corners=getattr(options, "align_corners", True))


def _fomm_frame_size(models_dir: Optional[Path]) -> int:
    from .fomm import FOMMConfig, default_config_path
    from .store import model_file

    config = model_file(models_dir, "fomm", "config") if models_dir is not None else None
    return FOMMConfig.from_yaml(config if config is not None and config.is_file() else default_config_path()).frame_size


register_renderer(RendererEntry(
    name="fomm", summary="First Order Motion Model, vox-adv-256 (Siarohin et al. 2019)", num_kp=10,
    store_names=("fomm",), load=_load_fomm, frame_size=_fomm_frame_size, audio_driven=True,
    licence="MIT code; weights published without a separate licence (models/fomm.md)"))


def _load_smac(models_dir: Path, device, options) -> Renderer:
    from .errors import CheckpointError
    from .smac import default_config_path, load_smac
    from .store import model_file

    config, generator, motion_estimator = (model_file(models_dir, "smac", key)
                                           for key in ("config", "generator", "motion_estimator"))
    missing = [str(p) for p in (generator, motion_estimator) if not p.is_file()]
    if missing:
        raise CheckpointError(f"SMAC weights missing: {', '.join(missing)}; download them by hand from the authors' "
                              "OneDrive (models/smac.md) and run `talkhead download smac --from-dir FOLDER` "
                              "(licence: CC BY-NC 4.0, non-commercial)")
    config = config if config.is_file() else default_config_path()
    return load_smac(config, generator, motion_estimator, device=device)


def _smac_frame_size(models_dir: Optional[Path]) -> int:
    from .smac import SMACConfig, default_config_path
    from .store import model_file

    config = model_file(models_dir, "smac", "config") if models_dir is not None else None
    return int(SMACConfig.from_yaml(config if config is not None and config.is_file() else default_config_path()).frame_size)


register_renderer(RendererEntry(
    name="smac", summary="SMAC, multi-scale motion/appearance codebooks (Zhao et al., CVPR 2025); reenact, or "
                         "animate with a --motion-model trained for it",
    num_kp=15, store_names=("smac",), load=_load_smac, frame_size=_smac_frame_size, audio_driven=False,
    licence="CC BY-NC 4.0 code and weights, NTU S-Lab licence parts: non-commercial use only (models/smac.md)"))


__all__ = ["Renderer", "MotionGenerator", "RendererEntry", "register_renderer", "unregister_renderer", "renderer_names",
           "get_renderer"]
