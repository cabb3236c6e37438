"""``odie config-schema generate|train``: the JSON Schema of a config file, for editors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..files import write_atomic
from ..option_types import output_file
from ..config_models import json_schema

KINDS = ("generate", "train")


def schema_for(kind: str) -> dict:
    """The JSON Schema of a ``generate`` or ``train`` config file."""
    if kind == "generate":
        from ..pipeline.config import PipelineConfig as model
    else:
        from ..model.train_config import TrainFile as model
    return json_schema(model)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie config-schema``."""
    parser.add_argument("kind", choices=KINDS, help="which config file")
    parser.add_argument("--output", "-o", type=output_file, default=None, help="write it here instead of to stdout")


def run(args: argparse.Namespace) -> int:
    """Print (or write) the schema."""
    text = json.dumps(schema_for(args.kind), indent=2) + "\n"
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.output, text.encode("utf-8"))
    else:
        print(text, end="")
    return 0
