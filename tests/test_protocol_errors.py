"""ErrorCode is the one source of the error rules: fatal (the server's) and retry (the client's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import protocol as p

DOCS_PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"

# PROTOCOL.md's error table, copied by hand: code, name, fatal. The last column is the
# client's rule, which PROTOCOL.md implies rather than tabulates: after these, a new
# session's WELCOME says where to resume, and the same request can then succeed.
ERROR_TABLE = [
    (1, "MALFORMED_FRAME", True, False),
    (2, "HELLO_REQUIRED", True, False),
    (3, "UNSUPPORTED_VERSION", True, False),
    (4, "UNAUTHORIZED", True, False),
    (5, "INVALID_BET", False, False),
    (6, "SEQUENCE_GAP", False, True),  # resynchronise from WELCOME
    (7, "AGENCY_CLOSED", False, False),
    (8, "NOT_DONE", False, False),
    (9, "SHUTTING_DOWN", True, True),  # the central comes back
    (10, "SESSION_REPLACED", True, False),  # another session owns the agency now
    (11, "SERVER_BUSY", True, True),  # a later connection may find room
    (12, "STORAGE_FAILED", False, True),  # "retry later"
    (13, "TIMEOUT", True, True),  # fresh connection, fresh deadlines
]


@pytest.mark.parametrize("code, name, fatal, retry", ERROR_TABLE, ids=[row[1] for row in ERROR_TABLE])
def test_each_error_code_carries_the_tables_rules(code, name, fatal, retry):
    error = p.ErrorCode(code)
    assert error.name == name
    assert error.fatal is fatal
    assert error.retry_in_new_session is retry


def test_the_table_names_every_code_once():
    assert [row[0] for row in ERROR_TABLE] == [int(code) for code in p.ErrorCode]


def test_the_projects_protocol_page_has_the_same_error_table():
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (yes|no) \|", DOCS_PROTOCOL.read_text(), re.MULTILINE)
    assert [(int(code), name, fatal == "yes") for code, name, fatal in rows] == [row[:3] for row in ERROR_TABLE]
