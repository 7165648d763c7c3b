"""The agent's configuration: one validated, immutable ``Config`` from flags, env and YAML.

Everything outside this package imports from here; the modules inside are the settings
table, the value parsers, the YAML file loader and the custom-stage schema.
"""

from otel_netlat.config.settings import (
    DEFAULT_BOUNDS_NS,
    STAGE_NAMES,
    Config,
    ConfigError,
    CustomHook,
    CustomStage,
    ListenAddress,
    add_arguments,
    load_config,
)

__all__ = [
    "DEFAULT_BOUNDS_NS",
    "STAGE_NAMES",
    "Config",
    "ConfigError",
    "CustomHook",
    "CustomStage",
    "ListenAddress",
    "add_arguments",
    "load_config",
]
