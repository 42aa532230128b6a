"""What a GGUF holds, read with gguf-py without loading any weights: architecture and tensor names/types.

Used to validate a fine-tuning run before any compute: is the file a GGUF, does it have weights that
llama-finetune can train (only F32 ones), what does --train-skip-regex freeze, and can the model saver
write this architecture back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import FinetuneError

# llama_set_param (src/llama-context.cpp) never trains these, whatever their type.
NEVER_TRAINED = ("token_embd.weight", "rope_freqs.weight")

# llama_model_saver_supports_arch (src/llama-model-saver.cpp): the saver is not validated for these;
# LLAMA_SAVER_ALLOW_UNTESTED=1 (tq-finetune --allow-untested-saver) makes it write them anyway.
SAVER_UNVALIDATED_ARCHS = frozenset({"gemma3n", "bitnet", "t5", "apertus", "step35"})


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # "F32", "Q4_1", ...
    n_bytes: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    arch: str
    tensors: tuple[TensorInfo, ...]

    @property
    def candidates(self) -> list[TensorInfo]:
        """Tensors llama-finetune can train: F32 weights, except the ones it never trains."""
        return [t for t in self.tensors if t.type_name == "F32" and t.name not in NEVER_TRAINED]


def read_model_info(path: str | Path) -> ModelInfo:
    """Architecture and tensor list of a GGUF; FinetuneError if it is missing or not a readable GGUF."""
    import gguf

    p = Path(path)
    if not p.exists():
        raise FinetuneError(f"model {p} does not exist")
    if not p.is_file():
        raise FinetuneError(f"model {p} is not a file")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FinetuneError(f"cannot read model {p}: {e.strerror}") from None
    if magic != b"GGUF":
        raise FinetuneError(f"model {p} is not a GGUF file (magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(p), "r")
    except Exception as e:  # gguf-py raises ValueError, struct.error, ... on a damaged file
        raise FinetuneError(f"cannot parse model {p} as GGUF: {e}") from None

    field = reader.fields.get("general.architecture")
    if field is None:
        raise FinetuneError(f"model {p} has no general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    tensors = tuple(
        TensorInfo(t.name, t.tensor_type.name, int(t.n_bytes), tuple(int(x) for x in t.shape))
        for t in reader.tensors
    )
    if not tensors:
        raise FinetuneError(f"model {p} has no tensors")
    return ModelInfo(p, arch, tensors)


def compile_skip_regex(pattern: str) -> re.Pattern[str]:
    """Compile --train-skip-regex (searched anywhere in the name, as std::regex_search does)."""
    if pattern == "":
        raise FinetuneError("--train-skip-regex is empty; leave it out to train every F32 weight")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise FinetuneError(f"--train-skip-regex {pattern!r} does not compile: {e}") from None


@dataclass(frozen=True)
class TrainPlan:
    trainable: list[TensorInfo]
    frozen: list[TensorInfo]  # candidates the regex froze
    not_f32: list[TensorInfo]  # never trainable (quantized, F16, BF16)

    @property
    def trainable_bytes(self) -> int:
        return sum(t.n_bytes for t in self.trainable)

    @property
    def frozen_bytes(self) -> int:
        return sum(t.n_bytes for t in self.frozen)


def plan_training(info: ModelInfo, skip: re.Pattern[str] | None) -> TrainPlan:
    """Split the model's tensors into trainable and frozen; FinetuneError when nothing would be trained,
    or when the regex freezes nothing (a typo)."""
    candidates = info.candidates
    not_f32 = [t for t in info.tensors if t.type_name != "F32"]
    if not candidates:
        types = sorted({t.type_name for t in info.tensors})
        raise FinetuneError(
            f"model {info.path} has no trainable weights: llama-finetune trains F32 weights only, this model's "
            f"tensors are {', '.join(types)}; convert it first with "
            f"`llama-tq quantize --allow-requantize {info.path} OUT.gguf F32`"
        )
    if skip is None:
        return TrainPlan(candidates, [], not_f32)
    frozen = [t for t in candidates if skip.search(t.name)]
    trainable = [t for t in candidates if not skip.search(t.name)]
    if not frozen:
        matched_other = [t.name for t in info.tensors if skip.search(t.name)]
        hint = (
            f" (it matches only non-F32 tensors, which are frozen anyway: {', '.join(matched_other[:3])})"
            if matched_other else ""
        )
        raise FinetuneError(
            f"--train-skip-regex {skip.pattern!r} matches none of the {len(candidates)} trainable tensors, so it "
            f"freezes nothing{hint}; example names: {', '.join(t.name for t in candidates[:4])}"
        )
    if not trainable:
        raise FinetuneError(
            f"--train-skip-regex {skip.pattern!r} freezes all {len(candidates)} trainable tensors; nothing would "
            "be trained"
        )
    return TrainPlan(trainable, frozen, not_f32)
