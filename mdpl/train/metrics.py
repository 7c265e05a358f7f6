"""Epoch metrics as torchmetrics Metrics, so DDP processes sync their counts
(docs/official-behaviour.md#heads-losses-and-metrics). Only torchmetrics' public API is used.

Official semantics kept: accuracy is argmax against labels (-100 ignored); AUROC is the macro mean of
the one-vs-rest AUCs on softmax probabilities; F1 thresholds sigmoid(logits) at 0.5, macro skips
classes with TP+FP+FN = 0, samples gives 0 to a sample without true positives, and 0/0 is 0.
The class count comes from the config (the official code hard-codes 23).
"""

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAUROC

from mdpl.data.tasks import TASKS


class Accuracy(Metric):
    """Share of argmax(logits) == label over labels != -100."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        keep = labels != -100
        self.correct += (logits.argmax(-1)[keep] == labels[keep]).sum()
        self.total += keep.sum()

    def compute(self) -> Tensor:
        return self.correct / self.total.clamp(min=1)


class AUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC on softmax(logits) (for two classes, about the binary AUROC of p1)."""

    def update(self, logits: Tensor, labels: Tensor) -> None:
        super().update(logits.float().softmax(-1), labels)


class MultilabelF1(Metric):
    """F1 micro, macro, samples and weighted for multi-hot labels; compute() returns all four."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sample_f1", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        pred = logits.sigmoid() >= 0.5  # in the logits' dtype, as the official fp16 metrics saw them
        true = labels > 0.5
        tp, fp, fn = pred & true, pred & ~true, ~pred & true
        self.tp += tp.sum(0)
        self.fp += fp.sum(0)
        self.fn += fn.sum(0)
        self.sample_f1 += _f1(tp.sum(1), fp.sum(1), fn.sum(1)).sum()
        self.samples += labels.shape[0]

    def compute(self) -> dict[str, Tensor]:
        f1 = _f1(self.tp, self.fp, self.fn)
        present = (self.tp + self.fp + self.fn) > 0
        support = (self.tp + self.fn).double()
        return {
            "f1_micro": _f1(self.tp.sum(), self.fp.sum(), self.fn.sum()),
            "f1_macro": f1[present].mean() if present.any() else f1.new_zeros(()),
            "f1_samples": self.sample_f1 / self.samples.clamp(min=1),
            "f1_weighted": (f1 * support).sum() / support.sum().clamp(min=1),
        }


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """2TP / (2TP + FP + FN), with 0/0 = 0."""
    tp, denom = 2 * tp.double(), (2 * tp + fp + fn).double()
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.zeros_like(denom))


class TaskMetrics(nn.Module):
    """Loss mean and task metrics for each phase (train, val, test) and active task.

    update(phase, output) takes the model's forward output ({task}_loss/_logits/_labels);
    compute(phase) returns {"{task}/{phase}/{name}": value, ..., "{phase}/the_metric": sum over tasks}.
    """

    def __init__(self, num_classes: dict[str, int]) -> None:
        """num_classes: task -> class count, for each task of the model."""
        super().__init__()
        self.tasks = list(num_classes)
        # keys "{phase}_metrics": a plain "train" key would clash with nn.Module.train
        self.phases = nn.ModuleDict(
            {
                f"{p}_metrics": nn.ModuleDict({t: _task_metrics(t, n) for t, n in num_classes.items()})
                for p in ("train", "val", "test")
            }
        )

    def update(self, phase: str, output: dict) -> None:
        for task, metrics in self.phases[f"{phase}_metrics"].items():
            logits, labels = output[f"{task}_logits"].detach(), output[f"{task}_labels"]
            # weighted by batch size: the epoch loss is the per-sample mean whatever the batching (official:
            # the mean of batch means, which changes with the batch split across DDP processes)
            metrics["loss"].update(output[f"{task}_loss"].detach().float(), weight=labels.shape[0])
            for name, metric in metrics.items():
                if name != "loss":
                    metric.update(logits, labels)

    def has_samples(self, phase: str) -> bool:
        """Whether this phase saw samples since its last reset (the loss mean's summed weight, local to this
        process; every process sees batches alike)."""
        return any(bool(metrics["loss"].weight > 0) for metrics in self.phases[f"{phase}_metrics"].values())

    def states(self, phase: str) -> dict[str, dict]:
        """Each metric's state (`metric_state`, on the CPU) of `phase`, keyed "task/name": what an exact resume
        restores with `merge_states`."""
        return {
            f"{task}/{name}": {k: _to_cpu(v) for k, v in metric.metric_state.items()}
            for task, metrics in self.phases[f"{phase}_metrics"].items()
            for name, metric in metrics.items()
        }

    def merge_states(self, phase: str, states: dict[str, dict]) -> None:
        """Add saved `states` (see `states`) into the metrics of `phase` (reset ones: they become those states)."""
        for key, state in states.items():
            task, name = key.split("/")
            metric = self.phases[f"{phase}_metrics"][task][name]
            metric.merge_state({k: _to_device(v, metric.device) for k, v in state.items()})  # list states too

    def compute(self, phase: str) -> dict[str, Tensor]:
        values, the_metric = {}, 0.0
        for task, metrics in self.phases[f"{phase}_metrics"].items():
            for name, metric in metrics.items():
                value = metric.compute()
                for key, v in value.items() if isinstance(value, dict) else [(name, value)]:
                    values[f"{task}/{phase}/{key}"] = v.float()
            the_metric = the_metric + values[f"{task}/{phase}/{TASKS[task].the_metric}"]
        values[f"{phase}/the_metric"] = the_metric
        return values

    def reset(self, phase: str) -> None:
        for metrics in self.phases[f"{phase}_metrics"].values():
            for metric in metrics.values():
                metric.reset()


def _to_cpu(value):
    return [v.detach().cpu().clone() for v in value] if isinstance(value, list) else value.detach().cpu().clone()


def _to_device(value, device: torch.device):
    return [v.to(device) for v in value] if isinstance(value, list) else value.to(device)


def _task_metrics(task: str, num_classes: int) -> nn.ModuleDict:
    """The loss mean and the registry's metrics of `task`."""
    names = TASKS[task].metrics
    metrics: dict[str, Metric] = {"loss": MeanMetric()}
    if "f1_macro" in names:
        metrics["f1"] = MultilabelF1(num_classes)
    if "accuracy" in names:
        metrics["accuracy"] = Accuracy()
    if "auroc" in names:
        metrics["auroc"] = AUROC(num_classes=num_classes, average="macro")
    return nn.ModuleDict(metrics)
