"""Protocol constants shared by the codecs and the wire: the version and every rejection reason."""

from __future__ import annotations

from typing import NoReturn

from gossip.errors import ProtocolError

PROTOCOL_VERSION = 1

# Every reason gossip.protocol.wire.unpack can give, in one place (peers count them by name).
REASONS: tuple[str, ...] = (
    "too_large",               # more bytes than security.max_message_bytes, rejected before parsing
    "parse_error",             # not a protobuf Envelope
    "bad_version",             # protocol version other than PROTOCOL_VERSION
    "unknown_message",         # an Envelope without a body this version knows
    "unknown_codec",           # selection / value codec / index encoding not known here
    "bad_node_id",             # a node id outside 0 .. peers-1
    "schema_mismatch",         # a different model (schema hash or element count)
    "count_mismatch",          # declared counts disagree with the payload sizes
    "index_out_of_range",      # an index >= numel
    "indices_not_increasing",  # duplicate or unsorted indices (incl. overlapping dense segments)
    "bad_segment",             # a dense segment or low-rank block that is empty, overlaps or sticks out
    "bad_scale",               # a quantization scale that is negative or not finite
    "non_finite",              # a decoded value that is NaN or infinite
    "bad_confidence",          # confidence_score not a number in [0, 1]
    "bad_field",               # another header field out of its range (string too long, rank too high ...)
    "zlib_bomb",               # a zlib stream that inflates past the size it may have
    "zlib_error",              # a corrupt, truncated or padded zlib stream
    "internal_error",          # a bug in the decoder; counted like any rejection, logged with detail
)


def reject(reason: str, detail: str = "") -> NoReturn:
    """Raise the one exception a decoder may raise."""
    assert reason in REASONS, reason
    raise ProtocolError(reason, detail)
