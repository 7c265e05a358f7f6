"""Epoch metrics (docs/official-behaviour.md#heads-losses-and-metrics) against sklearn and hand-computed values."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from mdpl.config import make_config
from mdpl.errors import ConfigError
from mdpl.train.metrics import AUROC, Accuracy, MultilabelF1, TaskMetrics
from mdpl.train.settings import Settings, model_config


def test_accuracy_ignores_minus_100_and_accumulates():
    m = Accuracy()
    m.update(torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]]), torch.tensor([0, 0, -100]))
    m.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert m.compute().item() == pytest.approx(2 / 3)


def test_auroc_is_macro_of_one_vs_rest_on_softmax():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 2, generator=g), torch.randint(0, 2, (50,), generator=g)
    m = AUROC(num_classes=2, average="macro")
    m.update(logits[:20], labels[:20])
    m.update(logits[20:], labels[20:])
    p = logits.softmax(-1).numpy()
    expected = np.mean([roc_auc_score(labels.numpy() == c, p[:, c]) for c in range(2)])
    assert m.compute().item() == pytest.approx(expected, abs=1e-6)


def test_f1_matches_hand_computation():
    # 3 classes; logits >= 0 <=> sigmoid >= 0.5. Class 2 never appears (TP+FP+FN = 0).
    logits = torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    m = MultilabelF1(3)
    m.update(logits, labels)
    out = {k: v.item() for k, v in m.compute().items()}
    # class 0: TP1 FP1 FN0 -> 2/3; class 1: TP1 FP0 FN1 -> 2/3; micro: TP2 FP1 FN1 -> 2/3
    assert out["f1_micro"] == pytest.approx(2 / 3)
    assert out["f1_macro"] == pytest.approx(2 / 3)  # class 2 excluded, not counted as 0
    # samples: 1, 2/3, 0 (no TP)
    assert out["f1_samples"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["f1_weighted"] == pytest.approx((2 / 3 * 1 + 2 / 3 * 2) / 3)


def test_f1_matches_sklearn_on_random_multilabel():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(64, 23, generator=g) - 1.0, (torch.rand(64, 23, generator=g) < 0.2).float()
    labels[:, 22] = 0  # an absent class that is still predicted somewhere
    m = MultilabelF1(23)
    for chunk in range(4):
        m.update(logits[chunk * 16 : (chunk + 1) * 16], labels[chunk * 16 : (chunk + 1) * 16])
    out = {k: v.item() for k, v in m.compute().items()}
    y, p = labels.numpy().astype(int), (logits >= 0).numpy().astype(int)
    present = [c for c in range(23) if (y[:, c] | p[:, c]).any()]
    assert out["f1_micro"] == pytest.approx(f1_score(y, p, average="micro", zero_division=0))
    assert out["f1_macro"] == pytest.approx(f1_score(y, p, average="macro", labels=present, zero_division=0))
    assert out["f1_samples"] == pytest.approx(f1_score(y, p, average="samples", zero_division=0))
    assert out["f1_weighted"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0))


def test_task_metrics_names_and_the_metric():
    tm = TaskMetrics({"hatememes": 2})
    logits, labels = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1, 0])
    tm.update("val", {"hatememes_loss": torch.tensor(0.5), "hatememes_logits": logits, "hatememes_labels": labels})
    out = tm.compute("val")
    assert set(out) == {"hatememes/val/loss", "hatememes/val/accuracy", "hatememes/val/auroc", "val/the_metric"}
    assert out["val/the_metric"] == out["hatememes/val/auroc"]
    assert out["hatememes/val/accuracy"].item() == pytest.approx(1 / 3)
    tm.reset("val")
    tm.update(
        "val", {"hatememes_loss": torch.tensor(1.0), "hatememes_logits": logits[:1], "hatememes_labels": labels[:1]}
    )
    assert tm.compute("val")["hatememes/val/loss"].item() == 1.0


def test_task_metrics_mmimdb_uses_configured_class_count_and_f1_macro():
    tm = TaskMetrics({"mmimdb": 4})
    logits = torch.tensor([[1.0, -1.0, -1.0, -1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    tm.update("test", {"mmimdb_loss": torch.tensor(0.1), "mmimdb_logits": logits, "mmimdb_labels": labels})
    out = tm.compute("test")
    assert out["test/the_metric"].item() == pytest.approx(0.5)  # class 0: 1, class 1: 0 -> macro 0.5
    assert out["mmimdb/test/f1_micro"].item() == pytest.approx(2 / 3)


def test_task_metrics_class_counts_come_from_the_model_config():
    cfg = model_config(make_config("task_finetune_mmimdb", mmimdb_class_num=4))
    tm = TaskMetrics({t: cfg.num_classes(t) for t in cfg.tasks})
    assert tm.tasks == ["mmimdb"] and tm.phases["val_metrics"]["mmimdb"]["f1"].tp.shape == (4,)


def test_config_without_task_is_rejected():
    """The default loss_names (itm, mlm: pre-training objectives) name no fine-tuning task."""
    config = make_config(per_gpu_batchsize=4)
    with pytest.raises(ConfigError, match="loss_names"):
        model_config(config)
    with pytest.raises(ConfigError, match="loss_names"):
        Settings.from_config(config)
