"""Fine-tune and evaluate on synthetic Hateful Memes (AUROC) with a tiny ViLT on the CPU."""

from __future__ import annotations

from mdpl.train.run import main


def test_fine_tune_then_test_only_writes_auroc_records(tmp_path, make_arrows, tiny_config, read_metrics, last_value):
    data = make_arrows(tmp_path / "data", "hatememes", samples=40)
    main(tiny_config("hatememes", data, tmp_path / "fit", max_epoch=1))
    [run] = (tmp_path / "fit" / "result").iterdir()
    rows = read_metrics(run / "version_0")
    assert last_value(rows, "val/the_metric") == last_value(rows, "hatememes/val/auroc")  # the_metric: AUROC
    ckpt = run / "version_0" / "checkpoints" / "last.ckpt"

    cfg = tiny_config(
        "hatememes",
        data,
        tmp_path / "eval",
        test_only=True,
        load_path=str(ckpt),
        test_ratio=0.3,
        test_type="image",
        test_exp_name="tiny",
    )
    [m] = main(cfg)
    line = (tmp_path / "eval" / "records" / "hatememes" / "hatememes_tiny_on_missing_image").read_text()
    auroc, acc = (f"{m[f'hatememes/test/{k}'] * 100:.2f}" for k in ("auroc", "accuracy"))
    assert line == f"missing ratio: 0.3, AUROC: {auroc}, Accuracy: {acc}\n"
