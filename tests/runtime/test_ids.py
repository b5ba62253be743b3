"""The one id rule (no server)."""

from __future__ import annotations

import sys
import unicodedata

from runtime.ids import MAX_ID_BYTES, RULE, id_text_problem


def test_control_characters_and_lone_surrogates_are_refused_everything_else_taken() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        refused = unicodedata.category(char) in ("Cc", "Cs")
        assert (id_text_problem(f"a{char}b") == RULE) is refused, hex(code)


def test_an_id_is_1_to_512_utf8_bytes() -> None:
    assert id_text_problem("") == RULE
    assert id_text_problem("x" * MAX_ID_BYTES) is None
    assert id_text_problem("x" * (MAX_ID_BYTES + 1)) == RULE
    assert id_text_problem("é" * (MAX_ID_BYTES // 2)) is None  # 2 bytes each
    assert id_text_problem("é" * (MAX_ID_BYTES // 2 + 1)) == RULE
    assert id_text_problem("😀" * (MAX_ID_BYTES // 4)) is None  # 4 bytes each
    assert id_text_problem("😀" * (MAX_ID_BYTES // 4) + "x") == RULE
