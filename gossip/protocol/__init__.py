"""The protocol: what travels between peers and how untrusted bytes are checked.

``constants`` (version, rejection reasons), ``codec/`` (selection, quantization, index coding,
error feedback), ``wire`` (protobuf Envelope pack / validate / decode) and ``generate`` (the
``.proto`` → ``gossip/_proto`` code generator and its drift check). No sockets, no threads.
"""
