"""``odie batch`` on the benchmark input, in this process so that its working phase can be metered."""

import sys

from common import meter, parse_args

from odie_async.cli import main


def argv_for(args) -> list[str]:
    """The ``odie batch`` command line a user would type for these settings."""
    argv = ["batch", args.input, "--output", args.output, "--base-url", args.base_url,
            "--concurrency", str(args.concurrency), "--max-attempts", str(args.max_attempts),
            "--timeout", str(args.timeout), "--no-progress"]
    if args.rpm:
        argv += ["--rpm", str(args.rpm)]
    if args.tpm:
        argv += ["--tpm", str(args.tpm)]
    return argv


if __name__ == "__main__":
    options = parse_args(__doc__)
    with meter() as figures:
        figures["exit_code"] = main(argv_for(options))
    sys.exit(figures["exit_code"])
