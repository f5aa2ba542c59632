"""JSON request bodies bounded in shape before anything parses them.

json.loads and pydantic build one Python object per value and one error dict per bad value: 20 MB of
`{"text": [0, 0, ...]}` cost a route minutes and gigabytes within the byte limit, and deep nesting runs into
the recursion limit. One pass over the raw bytes counts nesting and elements first and stops at the first
limit crossed, so its own cost is bounded by the limits, not by the body.
"""

import re

_STRUCTURE = re.compile(rb'["\[\]{},]')
# The rest of a string after its opening quote; anchored and possessive, so each string is scanned once.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')


def json_shape_error(body: bytes, *, max_depth: int, max_elements: int) -> str | None:
    """Why `body` is refused, or None. Elements are strings, commas and opened arrays or objects.

    Malformed JSON is left to the parser, which reports it properly.
    """
    depth = elements = 0
    position = 0
    search, string_rest = _STRUCTURE.search, _STRING_REST.match
    while (found := search(body, position)) is not None:
        char = body[found.start()]
        position = found.end()
        if char in _CLOSE:
            depth -= 1
            continue
        elements += 1
        if elements > max_elements:
            return f"more than {max_elements} JSON elements (strings, arrays, objects, commas)"
        if char == _QUOTE:
            rest = string_rest(body, position)
            if rest is None:
                return None
            position = rest.end()
        elif char in _OPEN:
            depth += 1
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
    return None


def parses_as_json(content_type: bytes | None) -> bool:
    """Whether FastAPI will parse a body with this content type as JSON (it does when none is given)."""
    if not content_type:
        return True
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )
