"""MemPromptTransformer: a frozen ViLT with MDPL's memory (generative) and shared prompts.

Construction, freezing, weight loading, `infer` and `forward` live above the Lightning hooks marker; the
training hooks live below it (see CONTRACT.md for who owns which part).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch import Tensor

from mdpl.gadgets.metrics import TaskMetrics
from mdpl.gadgets.records import append_records
from mdpl.modules import heads, objectives, weights
from mdpl.modules.map_prompts import add_map_prompts, run_blocks, select_prompts
from mdpl.modules.optim import build_optimizer, build_scheduler
from mdpl.modules.prompts import Bottleneck, PromptMemory, check_missing_type, layer_list, shared_prompts
from mdpl.modules.vilt import TextEmbeddings, VisionTransformer

log = logging.getLogger(__name__)

PROMPT_METHODS = ("mdpl", "map", "none")


class MemPromptTransformer(pl.LightningModule):
    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = config
        D = c["hidden_size"]
        self.prompt_method = c["prompt_method"]
        if self.prompt_method not in PROMPT_METHODS:
            raise ValueError(f"config prompt_method={self.prompt_method!r}: expected one of {PROMPT_METHODS}")
        if c["trim_text"] and not c["masked_query"]:
            raise ValueError("config trim_text=True needs masked_query=True: the official query max-pools over "
                             "[PAD] tokens, so cutting pads would change the results")
        if c["patch_order"] not in ("random", "fixed"):
            raise ValueError(f"config patch_order={c['patch_order']!r}: expected 'random' or 'fixed'")
        self.tasks = [t for t in objectives.TASKS if c["loss_names"].get(t, 0) > 0]

        # --- backbone (init order as official: text, token types, ViT, pooler)
        self.text_embeddings = TextEmbeddings(c["vocab_size"], D, c["max_text_len"], dropout=c["drop_rate"])
        self.text_embeddings.apply(heads.init_weights)
        self.token_type_embeddings = nn.Embedding(2, D)
        self.token_type_embeddings.apply(heads.init_weights)
        self.transformer = VisionTransformer(c["image_size"], c["patch_size"], D, c["num_layers"], c["num_heads"],
                                             c["mlp_ratio"], c["drop_rate"])
        self.pooler = heads.Pooler(D)
        self.pooler.apply(heads.init_weights)

        # --- heads
        for task in self.tasks:
            classifier = heads.build_classifier(D, c[f"{task}_class_num"])
            classifier.apply(heads.init_weights)
            setattr(self, f"{task}_classifier", classifier)

        # --- prompts; ModuleLists are indexed by position in the layer list (official key numbering)
        if self.prompt_method == "mdpl":
            self.gen_layers = layer_list(c, "gen_prompt_layers")
            self.shared_layers = layer_list(c, "shared_prompt_layers")
            Lg, Ls = c["gen_prompt_length"], c["shared_prompt_length"]
            mem = lambda: PromptMemory(c["mem_size"], Lg, D, c["top_k"], c["fp32_similarity"])  # noqa: E731
            self.gen_v_prompt_memory = nn.ModuleList([mem() for _ in self.gen_layers])
            self.gen_t_prompt_memory = nn.ModuleList([mem() for _ in self.gen_layers])
            self.shared_missing_t = nn.ParameterList(
                [nn.Parameter(torch.randn(Ls, D) * 0.02) for _ in self.shared_layers])
            self.shared_missing_v = nn.ParameterList(
                [nn.Parameter(torch.randn(Ls, D) * 0.02) for _ in self.shared_layers])
            width = D // 16  # official: hidden_size // 16 (the bottleneck_dim key is unused)
            self.bottleneck_texts = nn.ModuleList([Bottleneck(D, width) for _ in self.shared_layers])
            self.bottleneck_images = nn.ModuleList([Bottleneck(D, width) for _ in self.shared_layers])
            self.bottleneck_images.apply(heads.init_weights)
            self.bottleneck_texts.apply(heads.init_weights)
        elif self.prompt_method == "map":  # complete_prompt, missing_text_prompt, missing_img_prompt
            add_map_prompts(self, c)

        self._load_weights(c)
        for prefix in weights.BACKBONE_PREFIXES:  # the backbone is always frozen (official)
            for p in getattr(self, prefix[:-1]).parameters():
                p.requires_grad_(False)

    def _load_weights(self, c: dict) -> None:
        path = c["load_path"]
        if path and (c["test_only"] or c["finetune_first"]):
            # a fine-tuned checkpoint: every weight of this model, nothing else
            weights.load_finetuned(self, weights.read_state_dict(path), f"load_path={path!r}")
        elif path:
            sd = weights.read_state_dict(path)
            if weights.is_hf_vilt(sd):
                sd = weights.convert_hf_vilt(sd)
            sd = weights.interpolate_text_positions(sd, c["max_text_len"])
            weights.load_backbone(self, sd, f"load_path={path!r}", weights.BACKBONE_PREFIXES)
        elif c["vit_weights"]:
            sd = weights.timm_vit_to_vilt(weights.read_state_dict(c["vit_weights"], "vit_weights"))
            weights.load_backbone(self, sd, f"vit_weights={c['vit_weights']!r}", ("transformer.",))
        else:
            log.warning("load_path and vit_weights are empty: the backbone is randomly initialised")

    # ---- embeddings and layers

    def embed(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(text_embeds B x T x D, text_masks B x T, image_embeds B x I x D, image_masks B x I)."""
        c = self.hparams.config
        text_ids, text_masks = batch["text_ids"], batch["text_masks"]
        if c["trim_text"]:  # cut every batch to its longest real text (pads are invisible with masked_query)
            length = int((text_masks != 0).any(0).nonzero().max()) + 1
            text_ids, text_masks = text_ids[:, :length], text_masks[:, :length]
        text = self.text_embeddings(text_ids) + self.token_type_embeddings(torch.zeros_like(text_masks))
        images = batch["image"][0] if isinstance(batch["image"], (list, tuple)) else batch["image"]
        image, image_masks = self.transformer.visual_embed(images, c["max_image_len"], c["patch_order"])
        image = image + self.token_type_embeddings(torch.ones_like(image_masks))
        return text, text_masks, image, image_masks

    def _query(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Memory query: elementwise max over tokens (official: pads included; masked_query: real tokens)."""
        if self.hparams.config["masked_query"]:
            tokens = tokens.masked_fill(mask[..., None] == 0, float("-inf"))
        return tokens.amax(dim=1)

    def _layers_mdpl(self, text: Tensor, text_masks: Tensor, image: Tensor, image_masks: Tensor,
                     missing_type: Tensor) -> tuple[Tensor, int, int]:
        """Run the blocks, inserting prompts before each prompt layer. Sequence layout:
        [text-side prompts (nt) | text T | image-side prompts (nv) | image I]. Returns (x, nt, nv)."""
        B, T = text.shape[:2]
        check_missing_type(missing_type)  # once here, not per layer (a device sync)
        x = torch.cat([text, image], dim=1)
        mask = torch.cat([text_masks, image_masks], dim=1)
        gen = {layer: i for i, layer in enumerate(self.gen_layers)}
        shared = {layer: i for i, layer in enumerate(self.shared_layers)}
        nt = nv = s_t = s_v = 0  # prompt tokens on each side; shared ones among them
        for layer, block in enumerate(self.transformer.blocks):
            if layer in gen or layer in shared:
                t_side, t_tok = x[:, :nt], x[:, nt:nt + T]
                v_side, v_tok = x[:, nt + T:nt + T + nv], x[:, nt + T + nv:]
                if layer in gen:  # queries from the hidden states before this layer's insertion
                    p_t = self.gen_t_prompt_memory[gen[layer]](self._query(t_tok, text_masks)).to(x.dtype)
                    p_v = self.gen_v_prompt_memory[gen[layer]](self._query(v_tok, image_masks)).to(x.dtype)
                if layer in shared:
                    i = shared[layer]
                    s_t_new, s_v_new = shared_prompts(self.shared_missing_t[i], self.shared_missing_v[i],
                                                      self.bottleneck_texts[i], self.bottleneck_images[i],
                                                      missing_type)
                    s_t_new, s_v_new = s_t_new.to(x.dtype), s_v_new.to(x.dtype)
                if layer in gen and layer in shared:
                    t_parts, v_parts = [s_t_new, p_t, t_side], [s_v_new, p_v, v_side]
                elif layer in gen:  # official: generative prompts go after the shared ones so far
                    t_parts = [t_side[:, :s_t], p_t, t_side[:, s_t:]]
                    v_parts = [v_side[:, :s_v], p_v, v_side[:, s_v:]]
                else:
                    t_parts, v_parts = [s_t_new, t_side], [s_v_new, v_side]
                x = torch.cat(t_parts + [t_tok] + v_parts + [v_tok], dim=1)
                if layer in gen:
                    nt, nv = nt + p_t.shape[1], nv + p_v.shape[1]
                if layer in shared:
                    nt, nv = nt + s_t_new.shape[1], nv + s_v_new.shape[1]
                    s_t, s_v = s_t + s_t_new.shape[1], s_v + s_v_new.shape[1]
                ones = mask.new_ones(B, 1)
                mask = torch.cat([ones.expand(B, nt), text_masks, ones.expand(B, nv), image_masks], dim=1)
            x = block(x, mask)
        return x, nt, nv

    def _layers_none(self, text: Tensor, text_masks: Tensor, image: Tensor, image_masks: Tensor,
                     missing_type: Tensor) -> tuple[Tensor, int, int]:
        """Plain frozen ViLT: no prompts."""
        x = torch.cat([text, image], dim=1)
        mask = torch.cat([text_masks, image_masks], dim=1)
        for block in self.transformer.blocks:
            x = block(x, mask)
        return x, 0, 0

    def _layers_map(self, text: Tensor, text_masks: Tensor, image: Tensor, image_masks: Tensor,
                    missing_type: Tensor) -> tuple[Tensor, int, int]:
        """MAP: prompts chosen by missing type (map_prompts.py); inserted ones all lead the sequence."""
        x = torch.cat([text, image], dim=1)
        mask = torch.cat([text_masks, image_masks], dim=1)
        prompts = select_prompts(self, missing_type)
        x, inserted = run_blocks(self.transformer.blocks, x, mask, self.hparams.config, prompts)
        return x, inserted, 0

    # ---- public API

    def infer(self, batch: dict) -> dict[str, Tensor]:
        text, text_masks, image, image_masks = self.embed(batch)
        missing_type = torch.as_tensor(batch["missing_type"], device=text.device).long()
        layers = {"mdpl": self._layers_mdpl, "map": self._layers_map, "none": self._layers_none}[self.prompt_method]
        x, nt, nv = layers(text, text_masks, image, image_masks, missing_type)
        x = self.transformer.norm(x)
        T = text.shape[1]
        # prompt_type "input": pool the text [CLS] (after the nt text-side prompts); otherwise token 0
        cls_index = nt if self.hparams.config["prompt_type"] == "input" else 0
        return {
            "cls_feats": self.pooler(x[:, cls_index]),
            "raw_cls_feats": x[:, 0],
            "text_feats": x[:, nt:nt + T],
            "image_feats": x[:, nt + T + nv:],
            "text_masks": text_masks,
            "image_masks": image_masks,
        }

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """infer's outputs plus {task}_loss, {task}_logits, {task}_labels for each active task."""
        out = self.infer(batch)
        for task in self.tasks:
            logits = getattr(self, f"{task}_classifier")(out["cls_feats"])
            out.update(objectives.compute_task(task, logits, batch["label"]))
        return out

    # ---- Lightning hooks (training) ----

    def setup(self, stage: str) -> None:
        # metric states are not persistent, so they stay out of checkpoints
        if not hasattr(self, "task_metrics"):
            self.task_metrics = TaskMetrics(self.hparams.config)

    def _shared_step(self, batch: dict, phase: str) -> Tensor:
        out = self(batch)
        self.task_metrics.update(phase, out)
        return sum(v for k, v in out.items() if "loss" in k)  # official: every output key holding "loss"

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        # any process with a non-finite loss stops all of them before a step or checkpoint can use it
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step}: "
                "training stopped; the checkpoints saved so far (last.ckpt and the best) are kept unchanged. "
                "Try a lower learning_rate or precision=32.")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_epoch(self, phase: str) -> dict[str, float]:
        values = self.task_metrics.compute(phase)  # synced across processes by torchmetrics
        self.task_metrics.reset(phase)
        # every process already holds the same values (the checkpoint callback reads them on each);
        # sync_dist only averages identical numbers, and keeps Lightning from warning under DDP
        the_metric = f"{phase}/the_metric"
        self.log_dict({k: v for k, v in values.items() if k != the_metric}, sync_dist=True)
        self.log(the_metric, values[the_metric], prog_bar=phase != "train", sync_dist=True)
        return {k: float(v) for k, v in values.items()}

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        values = self._log_epoch("test")
        c = self.hparams.config
        if c["test_exp_name"] is not None and self.trainer.is_global_zero:
            append_records(c, values)

    def configure_optimizers(self) -> dict:
        c = self.hparams.config
        max_steps = c["max_steps"]
        if max_steps is None:  # official: len(train loader) * max_epoch // accumulation
            _ = self.trainer.estimated_stepping_batches  # makes Lightning size the train loader
            max_steps = self.trainer.num_training_batches * c["max_epoch"] // self.trainer.accumulate_grad_batches
        optimizer = build_optimizer(self, c)
        scheduler = build_scheduler(optimizer, c, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
