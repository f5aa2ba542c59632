"""JSON request bodies bounded in shape, and held to UTF-8, before anything parses them.

json.loads and pydantic build one Python object per value and one error dict per bad value: 20 MB of
`{"text": [0, 0, ...]}` cost a route minutes and gigabytes within the byte limit, and deep nesting runs into
the recursion limit. One pass over the raw bytes counts nesting and elements first and stops at the first
limit crossed, so its own cost is bounded by the limits, not by the body. The pass reads bytes as UTF-8, which
is all JSON may be (RFC 8259); json.loads would also take UTF-16 and UTF-32, where a character such as `Ģ`
(bytes 22 01 in UTF-16-LE) reads as a quote and hides everything after it from the count. So any other encoding
is refused: a NUL byte (never in UTF-8 JSON, always in UTF-16/32 of ASCII text) or bytes that are not UTF-8.
"""

import codecs
import json
import re

_STRUCTURE = re.compile(rb'["\[\]{},]')
# The rest of a string after its opening quote; anchored and possessive, so each string is scanned once.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# As much of an unterminated string as a piece holds: it stops short only at a final lone backslash.
_STRING_PART = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_DECODE_SLICE = 1 << 20


# How a body that is not UTF-8 is refused: as the parse error it is (TF Serving's clients look for these words).
ENCODING_PROBLEM = "JSON Parse error"


class JsonScanner:
    """The shape and encoding checks over a body fed piece by piece (as it arrives or inflates); `feed` answers
    why the body is refused, or None. Elements are strings, commas and opened arrays or objects.

    Malformed JSON is left to the parser, which reports it properly."""

    def __init__(self, *, max_depth: int, max_elements: int):
        self.max_depth = max_depth
        self.max_elements = max_elements
        self.depth = self.elements = 0
        self.in_string = False
        self.carried = b""  # a string's final backslash, whose escaped byte comes with the next piece
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.started = False

    def feed(self, piece: bytes, final: bool = False) -> str | None:
        return self._encoding_error(piece, final) or self._shape_error(piece)

    def _encoding_error(self, piece: bytes, final: bool) -> str | None:
        if not self.started and piece:
            self.started = True
            encoding = json.detect_encoding(piece[:4])
            if encoding not in ("utf-8", "utf-8-sig"):
                return f"{ENCODING_PROBLEM}: JSON must be UTF-8; this body looks like {encoding.upper()}"
        if b"\x00" in piece:
            return f"{ENCODING_PROBLEM}: JSON must be UTF-8 and holds no NUL bytes (is it UTF-16 or UTF-32?)"
        pending = self.utf8.getstate()[0]
        if pending or not piece.isascii() or final:
            view = memoryview(piece)
            try:
                # Only validity is wanted: the text is dropped as it is made, a slice at a time.
                for start in range(0, len(piece), _DECODE_SLICE):
                    self.utf8.decode(view[start:start + _DECODE_SLICE])
                self.utf8.decode(b"", final)
            except UnicodeDecodeError as exc:
                return f"{ENCODING_PROBLEM}: JSON must be UTF-8; invalid UTF-8 byte ({exc.reason})"
        return None

    def _shape_error(self, piece: bytes) -> str | None:
        data = self.carried + piece if self.carried else piece
        self.carried = b""
        position = self._skip_string(data, 0) if self.in_string else 0
        search = _STRUCTURE.search
        while position is not None and (found := search(data, position)) is not None:
            char = data[found.start()]
            position = found.end()
            if char in _CLOSE:
                self.depth -= 1
                continue
            self.elements += 1
            if self.elements > self.max_elements:
                return f"more than {self.max_elements} JSON elements (strings, arrays, objects, commas)"
            if char == _QUOTE:
                position = self._skip_string(data, position)
            elif char in _OPEN:
                self.depth += 1
                if self.depth > self.max_depth:
                    return f"JSON nested deeper than {self.max_depth} levels"
        return None

    def _skip_string(self, data: bytes, start: int) -> int | None:
        """Where scanning goes on after the string being read, or None when it runs past this piece."""
        rest = _STRING_REST.match(data, start)
        if rest is not None:
            self.in_string = False
            return rest.end()
        self.in_string = True
        self.carried = data[_STRING_PART.match(data, start).end():]
        return None


def json_shape_error(body: bytes, *, max_depth: int, max_elements: int) -> str | None:
    """Why a whole JSON body is refused (shape or encoding), or None."""
    return JsonScanner(max_depth=max_depth, max_elements=max_elements).feed(body, final=True)


def parses_as_json(content_type: bytes | None) -> bool:
    """Whether FastAPI will parse a body with this content type as JSON (it does when none is given)."""
    if not content_type:
        return True
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )
