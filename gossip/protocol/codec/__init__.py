"""Gradient-update codecs: selection, quantization, index coding, error feedback.

A pure library (no sockets, no threads). The runtime uses four names::

    layout = Layout.from_shapes(trainer.layout)
    ef = ErrorFeedback(layout.numel, device=trainer.flat.device)
    encoder = make_encoder(cfg.codec, layout)
    ef.add(delta)                     # after every local step
    encoded = encoder.encode(ef)      # .msg: a GradUpdate's codec fields; ef.residual -= what it sends
                                      # .sent: (indices, values) it adds on every receiver

and :mod:`gossip.protocol.wire` packs / validates / decodes the messages. The registries
(``SELECTORS``, ``VALUE_CODECS``, ``INDEX_CODECS``) are keyed by the proto enum
values and checked against the enums and the config when this package is
imported. ``python -m gossip.bench codec`` measures every codec.
"""

from gossip.protocol.codec import index, quantize, select  # noqa: F401  (register the codecs)
from gossip.protocol.codec.base import (
    INDEX_CODECS,
    PROTOCOL_VERSION,
    REASONS,
    SELECTORS,
    VALUE_CODECS,
    check_registries,
)
from gossip.protocol.codec.decoder import decode_update
from gossip.protocol.codec.encoder import Encoded, Encoder, Sent, UpdateEncoder, make_encoder
from gossip.protocol.codec.feedback import ErrorFeedback
from gossip.protocol.codec.index import entropy_bound_bits
from gossip.protocol.codec.layout import Layout

check_registries()

__all__ = [
    "INDEX_CODECS", "PROTOCOL_VERSION", "REASONS", "SELECTORS", "VALUE_CODECS",
    "Encoded", "Encoder", "ErrorFeedback", "Layout", "Sent", "UpdateEncoder", "decode_update", "entropy_bound_bits",
    "make_encoder",
]
