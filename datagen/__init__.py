"""Deterministic agency files: realistic bets for demos, tests and benchmarks.

The same seed gives the same files byte for byte, so the winners of a generated
lottery are known before it runs (`winners_by_agency`). The default shape follows
the course's real files: five agencies of uneven size, about 79,000 bets, Spanish
names with accents, 8-digit documents, birthdates 1980-2004, numbers 0-9999, CRLF.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Iterator

from protocol import Bet

# Rows per agency in the course's data set; other counts scale this shape.
COURSE_SIZES = (26936, 25518, 16014, 9238, 991)
DEFAULT_SEED = 7574
DEFAULT_WINNING_NUMBER = 7574

FIRST_NAMES = (
    "Santiago", "Agustín", "Tiago", "Mateo", "Benjamín", "Joaquín", "Tomás", "Nicolás",
    "Martín", "Lautaro", "Ramón", "Andrés", "Sofía", "Valentina", "María José", "Lucía",
    "Martina", "Catalina", "Emilia", "Julieta", "Belén", "Inés", "Zoe", "Violeta",
    "Mía", "Renata", "Ángeles", "Jazmín", "Noemí", "Iñaki", "Emanuel", "Lionel",
)
LAST_NAMES = (
    "Lorca", "Zambrano", "Rivera", "Gómez", "Fernández", "Rodríguez", "González", "López",
    "Martínez", "Pérez", "Sánchez", "Romero", "Díaz", "Álvarez", "Núñez", "Muñoz",
    "Ibáñez", "Peña", "Ortiz", "Suárez", "Benítez", "Giménez", "Acuña", "Quiroga",
)
_FIRST_BIRTHDATE = date(1980, 1, 1)
_BIRTHDATE_DAYS = (date(2004, 12, 31) - _FIRST_BIRTHDATE).days


@dataclass(frozen=True)
class Dataset:
    """Where a generated lottery's files are and what it must produce."""

    files: tuple[Path, ...]
    rows: tuple[int, ...]
    winners: dict[int, list[str]]  # agency -> winning documents, in file order


def agency_sizes(total: int, agencies: int) -> list[int]:
    """`total` rows over `agencies`, uneven in the course's proportions, at least 1 each."""
    weights = [COURSE_SIZES[i % len(COURSE_SIZES)] for i in range(agencies)]
    sizes = [max(1, total * w // sum(weights)) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def generate_bets(agency: int, rows: int, seed: int = DEFAULT_SEED) -> Iterator[Bet]:
    """The bets of one agency, lazily, the same for the same (agency, rows, seed)."""
    rng = random.Random(f"{seed}:{agency}")
    for _ in range(rows):
        first = rng.choice(FIRST_NAMES)
        if rng.random() < 0.4:
            first = f"{first} {rng.choice(FIRST_NAMES)}"
        birthdate = _FIRST_BIRTHDATE + timedelta(days=rng.randrange(_BIRTHDATE_DAYS + 1))
        yield Bet(
            first,
            rng.choice(LAST_NAMES),
            str(rng.randrange(10_000_000, 100_000_000)),
            birthdate.isoformat(),
            rng.randrange(10_000),
        )


def bet_line(bet: Bet) -> str:
    return f"{bet.first_name},{bet.last_name},{bet.document},{bet.birthdate},{bet.number}\r\n"


def write_dataset(
    directory: Path,
    total: int = sum(COURSE_SIZES),
    agencies: int = len(COURSE_SIZES),
    seed: int = DEFAULT_SEED,
    winning_number: int = DEFAULT_WINNING_NUMBER,
) -> Dataset:
    """Writes agency-1.csv .. agency-N.csv into `directory` and returns what they hold."""
    directory.mkdir(parents=True, exist_ok=True)
    files, winners = [], {}
    sizes = agency_sizes(total, agencies)
    for agency, rows in enumerate(sizes, start=1):
        path = directory / f"agency-{agency}.csv"
        winners[agency] = []
        with open(path, "w", encoding="utf-8", newline="") as out:
            for bet in generate_bets(agency, rows, seed):
                out.write(bet_line(bet))
                if bet.number == winning_number:
                    winners[agency].append(bet.document)
        files.append(path)
    return Dataset(tuple(files), tuple(sizes), winners)
