"""``odie eval``: score prediction files with the InstructIE paper's two metrics."""

from __future__ import annotations

import argparse

from ..evaluation.embedder import DEFAULT_BATCH_SIZE, DEFAULT_THREADS
from ..evaluation.evaluate import format_table, plot_reports, score_files, write_scores
from ..logs import configure_logging
from ..option_types import count, input_file, number, output_file, output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``odie eval``."""
    parser.add_argument("predictions", nargs="+", help="prediction files (.json list or .jsonl)")
    parser.add_argument(
        "--compat", action="store_true",
        help="reproduce the original evaluation scripts exactly, quirks included",
    )
    parser.add_argument("--json", dest="json_out", metavar="OUT.json", type=output_file,
                        help="write the scores as JSON (one object per file; a list for several)")
    parser.add_argument("--plot", metavar="DIR", type=output_folder, help="write one bar chart PNG per metric into DIR")
    parser.add_argument("--batch-size", type=count, default=DEFAULT_BATCH_SIZE,
                        help="header cells per encoder batch")
    parser.add_argument("--threads", type=number(int, 0, True, 4096), default=DEFAULT_THREADS,
                        help="torch threads while encoding (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device of the sentence encoder")
    parser.add_argument("--expect-items", type=number(int, 1), default=None, metavar="N",
                        help="the test set's size: warn when a file holds fewer items (default: the largest file's)")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Score, print the table; write JSON and plots when asked."""
    configure_logging(json=args.log_json)
    for path in args.predictions:
        input_file(path, "predictions file")
    reports = score_files(args.predictions, args.compat, args.device, args.batch_size, args.threads,
                          args.expect_items)
    print(format_table(reports))
    if args.json_out:
        write_scores(reports, args.json_out)
    if args.plot:
        plot_reports(reports, args.plot)
    return 0
