"""`python -m datagen` (installed: `lottery-datagen`): writes the agency files and prints each agency's winners."""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.settings import OneLineParser, __version__, program_name

from . import COURSE_SIZES, DEFAULT_SEED, DEFAULT_WINNING_NUMBER, write_dataset


def main(argv: list[str] | None = None) -> int:
    prog = program_name("python -m datagen")
    parser = OneLineParser(
        prog=prog,
        description="Generate deterministic agency files agency-1.csv .. agency-N.csv "
        "(first_name,last_name,document,birthdate,number; UTF-8; CRLF).",
    )
    parser.add_argument("--out", type=Path, default=Path(".data"), help="output directory (default: .data)")
    parser.add_argument("--agencies", type=int, default=len(COURSE_SIZES), help="number of agencies (default: 5)")
    parser.add_argument(
        "--bets", type=int, default=sum(COURSE_SIZES), help=f"total bets over all agencies (default: {sum(COURSE_SIZES)})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"generator seed (default: {DEFAULT_SEED})")
    parser.add_argument(
        "--winning-number",
        type=int,
        default=DEFAULT_WINNING_NUMBER,
        help=f"number whose winners are printed (default: {DEFAULT_WINNING_NUMBER})",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    args = parser.parse_args(argv)
    if args.agencies < 1 or args.bets < args.agencies:
        parser.error("need at least 1 agency and at least one bet per agency")
    try:
        dataset = write_dataset(args.out, args.bets, args.agencies, args.seed, args.winning_number)
    except OSError as error:  # e.g. a directory where a file goes (Docker makes one for a missing mount)
        print(f"{prog}: error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    for path, rows in zip(dataset.files, dataset.rows):
        agency = int(path.stem.split("-")[1])
        print(f"{path}: {rows} bets, {len(dataset.winners[agency])} winners with {args.winning_number}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
