"""`python -m bench.codec`: encode, then decode, then validate N generated bets; prints bets/s.

One process, no I/O: the figures are the codec's own ceiling. Run it on a quiet
machine and compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import time

import protocol as p
from datagen import generate_bets


def run(bets_total: int, max_amount: int) -> dict[str, float]:
    bets = list(generate_bets(1, bets_total))
    batches = list(p.pack_batches(bets, max_amount))

    started = time.perf_counter()
    frames, first = [], 1
    for batch in batches:
        frames.append(p.encode(p.Bets(first=first, bets=tuple(batch))))
        first += len(batch)
    encode_s = time.perf_counter() - started
    stream = b"".join(frames)

    # As the server does: each frame's bets are validated, then let go.
    today = p.utc_today()
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoded = decode_s = validate_s = 0.0
    for start in range(0, len(stream), 65536):
        t0 = time.perf_counter()
        decoder.receive_data(stream[start : start + 65536])
        messages = []
        while (message := decoder.next_message()) is not p.NEED_DATA:
            messages.append(message)
        t1 = time.perf_counter()
        for message in messages:
            if p.first_invalid_bet(message.bets, today) is not None:
                raise AssertionError("generated bets must be valid")
            decoded += message.count
        decode_s += t1 - t0
        validate_s += time.perf_counter() - t1

    assert decoded == bets_total
    return {
        "bets": bets_total,
        "frames": len(frames),
        "encode_bets_per_s": bets_total / encode_s,
        "decode_bets_per_s": bets_total / decode_s,
        "validate_bets_per_s": bets_total / validate_s,
        "decode_validate_bets_per_s": bets_total / (decode_s + validate_s),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__)
    parser.add_argument("--bets", type=int, default=1_000_000, help="bets to push through (default 1,000,000)")
    parser.add_argument("--max-amount", type=int, default=120, help="bets per frame (default 120)")
    args = parser.parse_args(argv)
    result = run(args.bets, args.max_amount)
    print(f"codec: {result['bets']:,} bets in {result['frames']:,} BETS frames")
    for key in ("encode", "decode", "validate", "decode_validate"):
        print(f"  {key.replace('_', ' + '):18} {result[key + '_bets_per_s']:>12,.0f} bets/s")


if __name__ == "__main__":
    main()
