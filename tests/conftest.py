"""Shared test settings (small thread pools for 2-core CI, no hub access, Ctrl-C and SIGTERM that stop the suite)
and fixtures.

Fixtures:
- `one_thread`: single-threaded torch for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`).
- `make_arrows`, `tiny_config`, `read_metrics`, `last_value`, `tiny_updates`: the pieces of the training
  tests (synthetic Arrow data, a tiny ViLT config, the CSV logger's metrics). Each is a session fixture that
  returns a function (or the TINY dict), so module-scoped fixtures can use them too.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from reference.common import SMALL  # noqa: E402

torch.set_num_threads(2)

# Ctrl-C and SIGTERM stop the whole suite within seconds. Inside a Lightning fit or test, Lightning turns an
# interrupt into a graceful stop of that run (a SystemExit the test reports as a failure), leaves SIGINT ignored,
# and the suite would go on: so the signal is remembered, and the test's teardown ends the session.
_STOP: list[int] = []


def _stop(signum, frame) -> None:
    _STOP.append(signum)
    raise KeyboardInterrupt


def pytest_sessionstart(session) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)


@pytest.fixture(autouse=True)
def _stop_when_interrupted():
    yield
    signal.signal(signal.SIGINT, _stop)  # a KeyboardInterrupt inside a Lightning run leaves SIGINT ignored
    if _STOP:
        pytest.exit(f"interrupted by signal {_STOP[0]}", returncode=130)


REPO = Path(__file__).resolve().parents[1]
# task -> (synthetic generator, make_arrow --dataset, named config)
TASKS = {
    "food101": ("food101", "food101", "task_finetune_food101"),
    "mmimdb": ("mmimdb", "mmimdb", "task_finetune_mmimdb"),
    "hatememes": ("hateful_memes", "hateful_memes", "task_finetune_hatememes"),
}
# Runs through run.py use the one small test model (reference.common.SMALL) with the tokenizers' real
# vocabularies, and these run settings: seconds per run on a CPU.
TINY = {
    **{key: value for key, value in SMALL.items() if key not in ("vocab_size", "clip_vocab_size")},
    **dict(
        food101_class_num=4,
        num_gpus=0,
        precision=32,
        num_workers=0,
        per_gpu_batchsize=4,
        batch_size=8,
        max_epoch=2,
        max_steps=None,
        learning_rate=1e-3,
        val_check_interval=1.0,
    ),
}


@pytest.fixture
def one_thread():
    """Model tests run single-threaded: on a shared 2-core machine a 2-thread pool makes small ops ~100x
    slower (spinning threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make_arrows(root: Path, task: str, samples: int = 40) -> Path:
    """Synthetic raw data converted by make_arrow's writer; returns the data_root."""
    from mdpl.data.synthetic import generate
    from mdpl.data.writers import WRITERS, convert

    generator, writer, _ = TASKS[task]
    generate(generator, root / "raw", samples=samples, classes=4, side_range=(32, 96))
    convert(WRITERS[writer], root / "raw", root / "arrows")
    return root / "arrows"


def _tiny_config(task: str, data: Path, out: Path, named: str | None = None, **updates) -> dict:
    """The task's named config (or `named`) with TINY and every output folder under `out`."""
    from mdpl.config import make_config

    paths = dict(
        data_root=str(data),
        log_dir=str(out / "result"),
        records_root=str(out / "records"),
        missing_table_root=str(out / "tables") + "/",
    )
    return make_config(named or TASKS[task][2], **{**TINY, **paths, **updates})


def _read_metrics(run_dir: Path) -> list[dict]:
    """Rows of the CSV logger's metrics.csv in a run folder."""
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")][-1]


@pytest.fixture(scope="session")
def make_arrows():
    return _make_arrows


@pytest.fixture(scope="session")
def tiny_config():
    return _tiny_config


@pytest.fixture(scope="session")
def read_metrics():
    return _read_metrics


@pytest.fixture(scope="session")
def last_value():
    return _last_value


@pytest.fixture(scope="session")
def tiny_updates() -> dict:
    """TINY: the tiny-model updates of tiny_config (a copy)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
