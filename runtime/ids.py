"""The one rule for the ids that cross esrec's stages: item ids (the text of a catalog
document's ``_id``, the Elasticsearch ``_id``), user ids and event ids.

An item is indexed under the text of its ``_id`` and every user event, recall request and
recall answer names it by that same text, so one rule serves every stage: an id the
indexer accepts is an id an event may name. 1 to 512 UTF-8 bytes (Elasticsearch's limit
for ``_id``), any letters, digits, spaces or punctuation of any script, no control
characters (they break logs, headers and terminals).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_ID_BYTES = 512
RULE = f"an id is 1 to {MAX_ID_BYTES} UTF-8 bytes without control characters"
# Unicode categories Cc (C0, DEL, C1 controls) and Cs (lone surrogates), as one C scan
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def id_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be an id, or None if it can."""
    if not text or (len(text) > MAX_ID_BYTES // 4  # 4 bytes a character at most
                    and len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES):
        return RULE
    return RULE if _FORBIDDEN.search(text) else None


def _checked(text: str) -> str:
    problem = id_text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


Id = Annotated[str, AfterValidator(_checked)]
