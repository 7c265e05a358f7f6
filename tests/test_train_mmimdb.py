"""Fine-tune and evaluate on synthetic MM-IMDb (multi-label, F1 metrics) with a tiny ViLT on the CPU."""

from __future__ import annotations

import torch

from mdpl.train.run import main


def test_fine_tune_then_test_only_writes_correctly_labelled_f1_records(
    tmp_path, make_arrows, tiny_config, read_metrics, last_value
):
    data = make_arrows(tmp_path / "data", "mmimdb", samples=20)
    main(tiny_config("mmimdb", data, tmp_path / "fit", max_epoch=1))
    [run] = (tmp_path / "fit" / "result").iterdir()
    rows = read_metrics(run / "version_0")
    assert last_value(rows, "val/the_metric") == last_value(rows, "mmimdb/val/f1_macro")  # the_metric: F1-Macro
    ckpt = run / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0

    cfg = tiny_config(
        "mmimdb",
        data,
        tmp_path / "eval",
        test_only=True,
        load_path=str(ckpt),
        test_ratio=0.7,
        test_type="text",
        test_exp_name="tiny",
    )
    [m] = main(cfg)
    line = (tmp_path / "eval" / "records" / "mmimdb" / "mmimdb_tiny_on_missing_text").read_text()
    pct = {k: f"{m[f'mmimdb/test/{k}'] * 100:.2f}" for k in ("f1_macro", "f1_micro", "f1_weighted", "f1_samples")}
    # official labels were swapped (F1-Weighted showed samples and F1-Sample weighted); fixed here
    assert line == (
        f"missing ratio: 0.7, F1-Macro: {pct['f1_macro']}, F1-Micro: {pct['f1_micro']}, "
        f"F1-Weighted: {pct['f1_weighted']}, F1-Sample: {pct['f1_samples']}\n"
    )
    assert m["test/the_metric"] == m["mmimdb/test/f1_macro"]
