"""Settings of ``odie train``: the ``lora`` and ``training`` sections of a YAML file, as pydantic models.

``load_config`` reports every mistake at once with its path (``training.learning_rate``),
reads ``3e-4`` as a float, and rejects unknown keys listing the known ones;
``odie config-schema train`` writes the JSON Schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ..paths import find_config
from ..config_models import Section, load
from . import chat_format

DEFAULT_CONFIG = "train-cpu-small.yaml"
# Linear layers vLLM can serve LoRA weights for in Llama-family models (packed as
# qkv_proj and gate_up_proj there). Embedding and LM-head adapters are left out:
# vLLM's support for them is limited, and SmolLM2 ties the two.
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
Layout = Literal[chat_format.LAYOUTS]  # type: ignore[valid-type]


class LoraSettings(Section):
    """The adapter's shape (the ``lora`` section)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: sorted(VLLM_LORA_MODULES), min_length=1)

    @field_validator("target_modules")
    @classmethod
    def _servable(cls, modules: list[str]) -> list[str]:
        unsupported = sorted(set(modules) - VLLM_LORA_MODULES)
        if unsupported:
            raise ValueError(f"target_modules {unsupported} cannot be served by vLLM; "
                             f"use a subset of {sorted(VLLM_LORA_MODULES)}")
        return modules


class TrainingSettings(Section):
    """The optimiser and the schedule (the ``training`` section)."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(0, ge=0, description="caps the epochs when above 0")
    learning_rate: float = Field(3e-4, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    lr_scheduler: str = "linear"
    micro_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    cutoff_len: int = Field(512, ge=16)
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1)
    seed: int = 42


class TrainFile(Section):
    """A training config file as written: ``lora:``, ``training:`` and ``chat_layout``."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    chat_layout: Layout = chat_format.AUTO


class TrainConfig(LoraSettings, TrainingSettings):
    """Settings of one training run, flat: every field of both sections and ``chat_layout``."""

    chat_layout: Layout = chat_format.AUTO

    @classmethod
    def from_file(cls, file: TrainFile) -> TrainConfig:
        """The flat settings of a validated file."""
        data: dict[str, object] = {}
        for section in (file.lora, file.training):
            data |= {name: getattr(section, name) for name in type(section).model_fields}
        return cls(**data, chat_layout=file.chat_layout)


def load_config(path: str | Path | None) -> TrainConfig:
    """Read a training config (a file or packaged preset; default ``train-cpu-small.yaml``)."""
    found = find_config(path or DEFAULT_CONFIG, prefix="train-")
    return TrainConfig.from_file(load(TrainFile, found, "training config"))


def schema_model() -> type[BaseModel]:
    """The model whose JSON Schema describes a training config file."""
    return TrainFile
