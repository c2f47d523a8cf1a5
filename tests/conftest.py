"""Shared test fixtures: paths to the golden data in tests/data (how it was made: docs/fixtures.md)."""
from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def fomm_parity() -> dict:
    with np.load(DATA / "fomm" / "parity.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def mssync_parity() -> dict:
    with np.load(DATA / "mssync" / "parity.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def e2e_parity() -> dict:
    with np.load(DATA / "e2e" / "parity.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def mssync_tiny_dir(tmp_path_factory) -> Path:
    """A released-format MS-Sync directory (``args`` + ``model_chkpt.pt``) with the tiny weights."""
    d = tmp_path_factory.mktemp("mssync_tiny")
    shutil.copy(DATA / "mssync" / "args", d / "args")
    with lzma.open(DATA / "mssync" / "model_chkpt.pt.xz") as src, open(d / "model_chkpt.pt", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return d


@pytest.fixture(scope="session")
def fomm_tiny_files() -> tuple[Path, Path]:
    """(config YAML, checkpoint) of the tiny FOMM in the official formats."""
    return DATA / "fomm" / "tiny.yaml", DATA / "fomm" / "tiny-cpk.pth.tar"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory, mssync_tiny_dir) -> Path:
    """The tiny FOMM + tiny MS-Sync arranged in the released models-dir layout, verified and recorded.

    Tests must not modify it (copy it first): it is shared by the whole session.
    """
    from talkhead.store import register_local

    root = tmp_path_factory.mktemp("models")
    (root / "fomm").mkdir()
    shutil.copy(DATA / "fomm" / "tiny.yaml", root / "fomm" / "vox-adv-256.yaml")
    shutil.copy(DATA / "fomm" / "tiny-cpk.pth.tar", root / "fomm" / "vox-adv-cpk.pth.tar")
    shutil.copytree(mssync_tiny_dir, root / "mssync")
    register_local(root)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (restored afterwards).

    Tiny models and autoregressive loops are many small ops: one thread is fastest, and avoids OpenMP
    spin-waiting when the 2 cores are shared (measured ~20x slower with two oversubscribed threads).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def astro_faces():
    """The dlib faces of ``skimage.data.astronaut()`` (a real face photo), largest first."""
    import skimage.data

    from talkhead.landmarks import detect_faces

    return detect_faces(skimage.data.astronaut(), backend="dlib")


@pytest.fixture(scope="session")
def astro_face(astro_faces):
    """The astronaut's face as the pipeline selects it."""
    from talkhead.landmarks import select_face

    return select_face(astro_faces, source="astronaut")


@pytest.fixture
def new_process():
    """The store's hash memo cleared before and after the test, as in a new process (nothing hashed
    yet). Modules of store tests use it with ``pytestmark = pytest.mark.usefixtures("new_process")``."""
    from talkhead import store

    store.clear_hash_memo()
    yield
    store.clear_hash_memo()


@pytest.fixture
def packaged_tiny_config(monkeypatch):
    """Make the 'packaged' FOMM config the tiny one, so it fits the tiny checkpoint."""
    import talkhead.fomm

    monkeypatch.setattr(talkhead.fomm, "default_config_path", lambda: DATA / "fomm" / "tiny.yaml")
