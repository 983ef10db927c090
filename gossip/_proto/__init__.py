"""Generated protobuf code for proto/gossip.proto (package ``gossip.v1``). Do not edit.

Regenerate after changing the .proto (needs the dev extra: grpcio-tools and
mypy-protobuf at the versions pinned in pyproject.toml)::

    python -m gossip.proto --regenerate

``tests/test_proto.py`` regenerates into a temporary folder and fails if the
committed files differ.
"""
