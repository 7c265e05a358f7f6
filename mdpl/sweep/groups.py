"""Which checkpoints of a sweep belong together: labels, seed-replicate groups and the training recipe."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from mdpl.errors import ConfigError
from mdpl.train.settings import MODEL_KEYS, OptimConfig
from mdpl.train.trainer import path_stem

# saved-config keys that define how a checkpoint was trained (besides the seed): equal recipes = seed replicates
RECIPE_KEYS = (
    MODEL_KEYS
    + tuple(f.name for f in fields(OptimConfig))
    + (
        "datasets",
        "both_ratio",
        "table_draw",
        "simulate_missing",
        "mmimdb_one_plot",
        "train_transform_keys",
        "finetune_first",
    )
)


def series_names(paths: list[str], methods: list[str]) -> list[str]:
    """One label per checkpoint: its prompt_method, plus (when methods repeat) the shortest path suffix that
    tells the checkpoints of that method apart: `mdpl:runA/.../last` rather than two `mdpl:last`."""
    resolved = [os.path.realpath(p) for p in paths]
    dupes = sorted({p for p in paths if resolved.count(os.path.realpath(p)) > 1})
    if dupes:
        raise ConfigError(f"config sweep_paths lists the same checkpoint more than once: {dupes}")
    if len(set(methods)) == len(methods):
        return list(methods)
    parts = [Path(os.path.splitext(r)[0]).parts for r in resolved]
    names = []
    for i, (method, own) in enumerate(zip(methods, parts)):
        others = [q for j, q in enumerate(parts) if j != i and methods[j] == method]
        k = 1
        while any(q[-k:] == own[-k:] for q in others):
            k += 1
        names.append(method if not others else f"{method}:{'/'.join(own[-k:])}")
    return names


def check_groups(groups: object, paths: list[str]) -> list[str]:
    """sweep_groups checked against the checkpoint list: [] or one non-empty name per checkpoint."""
    if groups is None or (isinstance(groups, (list, tuple)) and not groups):
        return []
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) and g.strip() for g in groups):
        raise ConfigError(
            f"config sweep_groups={groups!r}: expected [] (group by saved config without the seed) "
            "or a list of non-empty group names, one per sweep_paths entry"
        )
    if len(groups) != len(paths):
        raise ConfigError(
            f"config sweep_groups has {len(groups)} entries but sweep_paths (or load_path) lists "
            f"{len(paths)} checkpoints: give one group name per checkpoint, or [] to group by "
            "saved config"
        )
    return [g.strip() for g in groups]


def training_recipe(saved: dict) -> dict | None:
    """The keys of a saved config that define how its checkpoint was trained, seed and paths excluded (the
    pre-trained weights by file stem); None for a checkpoint without a saved config (official ones)."""
    if not saved:
        return None
    recipe = {k: saved[k] for k in RECIPE_KEYS if k in saved}
    for table in ("missing_ratio", "missing_type"):
        if isinstance(saved.get(table), dict):
            recipe[f"{table}.train"] = saved[table].get("train")
    for key in ("load_path", "vit_weights"):
        recipe[key] = path_stem(str(saved.get(key) or ""))
    return recipe


def _short(value: object) -> str:
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def group_names(names: list[str], methods: list[str], saved: list[dict], given: list[str]) -> list[str]:
    """One group label per checkpoint. `given` (sweep_groups) wins. Otherwise checkpoints with equal training
    recipes (`training_recipe`) and distinct seeds form one group, labelled by their prompt_method plus, when
    another group has that method too, the recipe keys that differ (`mdpl (max_epoch=1)`); every other
    checkpoint (no saved config, a repeated seed such as best and last of one run) keeps its own `names` label."""
    if given:
        return list(given)
    recipes = [training_recipe(s) for s in saved]
    keys = [json.dumps(r, sort_keys=True, default=str) if r is not None else None for r in recipes]
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(i)
    multi = []
    for idx in members.values():
        seeds = [saved[i].get("seed") for i in idx]
        if len(idx) > 1 and len(set(map(str, seeds))) == len(seeds):
            multi.append(idx)
    labels = list(names)
    grouped = {i for idx in multi for i in idx}
    for idx in multi:
        method = methods[idx[0]]
        rivals = [g for g in multi if g is not idx and methods[g[0]] == method]
        alone = [i for i in range(len(names)) if i not in grouped and methods[i] == method]
        label = method
        if rivals or alone:
            own = recipes[idx[0]]
            diff = sorted(
                {k for g in rivals for k in set(own) | set(recipes[g[0]]) if own.get(k) != recipes[g[0]].get(k)}
            )
            label = (
                f"{method} ({', '.join(f'{k}={_short(own.get(k))}' for k in diff)})"
                if diff
                else f"{method} ({len(idx)} seeds)"
            )
        for i in idx:
            labels[i] = label
    # two different groups never share a label
    seen: dict[str, tuple] = {}
    for i, label in enumerate(labels):
        owner = tuple(next((g for g in multi if i in g), (i,)))
        base, k = label, 2
        while label in seen and seen[label] != owner:
            label, k = f"{base} #{k}", k + 1
        seen[label] = owner
        labels[i] = label
    return labels
