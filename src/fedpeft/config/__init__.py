"""Typed run configuration, YAML recipes and ``--set key=value`` overrides."""

from fedpeft.config.recipes import ConfigError, list_recipes, load_config, load_run_config
from fedpeft.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "list_recipes", "load_config", "load_run_config"]
