"""Fine-tuning with llama-tq's patched llama-finetune: the `tq-finetune` command (see docs/finetune.md)."""

from __future__ import annotations

from .cli import main, run
from .errors import FinetuneError
from .model_info import ModelInfo, TrainPlan, compile_skip_regex, plan_training, read_model_info

__all__ = ["FinetuneError", "ModelInfo", "TrainPlan", "compile_skip_regex", "main", "plan_training",
           "read_model_info", "run"]
