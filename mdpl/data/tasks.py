"""The task registry: everything that differs between MM-IMDb, UPMC Food-101 and Hateful Memes, in one place.

Datasets, writers, losses, metrics, records, the optimiser's head groups and the tests read it; nothing
else names a task.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    name: str  # the loss_names key and the prefix of every metric ("food101/val/accuracy")
    dataset: str  # the config `datasets` entry (the official data folder name)
    writer: str  # make_arrow.py --dataset value (mdpl.writers.WRITERS key)
    arrow_names: tuple[str, str, str]  # Arrow file stems of the train, val and test splits
    text_column: str  # Arrow column holding the sample's texts (a list per row)
    multilabel: bool  # multi-hot labels and BCE (else one class index and cross-entropy)
    metrics: tuple[str, ...]  # metric names logged per phase besides "loss"
    the_metric: str  # the one that picks the best checkpoint (higher is better)
    records_format: tuple[tuple[str, str], ...]  # (label, metric) pairs of a records line, in order

    @property
    def class_num_key(self) -> str:
        return f"{self.name}_class_num"

    @property
    def head(self) -> str:
        """The classifier's attribute and state-dict prefix (official name)."""
        return f"{self.name}_classifier"

    def arrow_name(self, split: str) -> str:
        return self.arrow_names[SPLITS.index(split)]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("mmimdb", "mmimdb", "mmimdb", ("mmimdb_train", "mmimdb_dev", "mmimdb_test"), "plots", True,
             ("f1_macro", "f1_micro", "f1_samples", "f1_weighted"), "f1_macro",
             # the official records swapped the last two labels; here each label names its value
             (("F1-Macro", "f1_macro"), ("F1-Micro", "f1_micro"), ("F1-Weighted", "f1_weighted"),
              ("F1-Sample", "f1_samples"))),
        Task("food101", "Food101", "food101", ("food101_train", "food101_val", "food101_test"), "text", False,
             ("accuracy",), "accuracy", (("Accuracy", "accuracy"),)),
        Task("hatememes", "Hatefull_Memes", "hateful_memes", ("hatememes_train", "hatememes_dev", "hatememes_test"),
             "text", False, ("accuracy", "auroc"), "auroc", (("AUROC", "auroc"), ("Accuracy", "accuracy"))),
    )
}  # fmt: skip
BY_DATASET: dict[str, Task] = {t.dataset: t for t in TASKS.values()}


def task_of_dataset(dataset: str) -> Task:
    if dataset not in BY_DATASET:
        raise ValueError(
            f"config datasets entry {dataset!r}: expected one of {sorted(BY_DATASET)} "
            "(use a task_finetune_* named config)"
        )
    return BY_DATASET[dataset]
