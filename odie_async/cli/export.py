"""``odie export``: a run folder's training files as one Hugging Face ``datasets`` split.

::

    odie export RUN [--parquet [FILE]] [--save-to-disk [DIR]]

``train.jsonl`` and ``train_cot.jsonl`` share one schema (a ``variant`` column), so
they load as one split; ``--parquet`` writes it as ``RUN/dataset.parquet`` (or FILE),
``--save-to-disk`` as ``RUN/dataset/`` (or DIR) for ``datasets.load_from_disk``.
A target that is one of the run's own files (``train.jsonl``, ``requests.jsonl``...,
through a link too) is refused: an export never writes over its input.
Exit codes: 0 written, 2 nothing to export or bad options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..exceptions import InputError
from ..option_types import output_file, output_folder
from ..pipeline.export import export_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie export``."""
    parser.add_argument("run", help="an `odie generate` run folder")
    parser.add_argument("--parquet", nargs="?", const="", default=None, metavar="FILE", type=_or_default(output_file),
                        help="write Parquet (default file: RUN/dataset.parquet)")
    parser.add_argument("--save-to-disk", nargs="?", const="", default=None, metavar="DIR",
                        type=_or_default(output_folder),
                        help="write a datasets folder (default: RUN/dataset)")


def _or_default(check):
    """``check`` for a path given; the option alone (argparse passes its empty ``const``) means the default."""
    return lambda text: text if text == "" else check(text)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``odie export``."""
    folder = Path(args.run)
    if args.parquet is None and args.save_to_disk is None:
        print("odie export: error: say --parquet and/or --save-to-disk", file=sys.stderr)
        return 2
    parquet = None if args.parquet is None else Path(args.parquet or folder / "dataset.parquet")
    disk = None if args.save_to_disk is None else Path(args.save_to_disk or folder / "dataset")
    if not folder.is_dir():
        raise InputError(folder, 0, "no such run folder")
    written = export_dataset(folder, parquet, disk)  # a ConfigError or InputError: `odie` says it, exit 2
    print(f"{written.pop('records')} records -> {', '.join(written.values())}")
    return 0
