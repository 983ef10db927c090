"""One typed configuration tree, loaded from YAML with ``key.sub=value`` overrides.

Every section is a frozen dataclass (:mod:`gossip.config.schema`); every field has a default,
a type and, where it matters, a range. Loading (:mod:`gossip.config.loader`) rejects unknown
keys, wrong types, non-finite numbers and out-of-range values with a one-line
:class:`~gossip.errors.ConfigError` that names the key::

    cfg = load("configs/mnist_4peers.yaml", ["train.lr=0.1", "peers=8"])
"""

from gossip.config.loader import (
    config_hash,
    from_dict,
    load,
    load_raw,
    parse_bandwidth,
    parse_overrides,
    replace,
    to_dict,
    validate,
)
from gossip.config.schema import (
    CheckpointConfig,
    CodecConfig,
    CommunicationConfig,
    Config,
    DashboardConfig,
    DataConfig,
    DistillConfig,
    ExperimentConfig,
    LinkConfig,
    ModelConfig,
    SecurityConfig,
    TimeoutConfig,
    TopologyConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig", "CodecConfig", "CommunicationConfig", "Config", "DashboardConfig", "DataConfig",
    "DistillConfig", "ExperimentConfig", "LinkConfig", "ModelConfig", "SecurityConfig", "TimeoutConfig", "TopologyConfig",
    "TrainConfig", "config_hash", "from_dict", "load", "load_raw", "parse_bandwidth", "parse_overrides",
    "replace", "to_dict", "validate",
]
