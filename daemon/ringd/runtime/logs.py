"""Daemon logging: one line per event on stderr, with the node name on every line.

Named ``logs`` (not ``logging``) so it never shadows the standard library module.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "ringd"


def setup_logging(node_name: str, level: str = "info") -> logging.Logger:
    """Configure and return the daemon logger; calling it again replaces the handler."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d {node_name} %(levelname)s %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Our handler is the only one: never duplicate lines through the root logger.
    logger.propagate = False
    return logger


def embedded_logger(node_name: str, level: str = "info") -> logging.Logger:
    """The logger of a node inside an application (``ringd.embedded``): ``ringd.<name>``,
    left to the application's logging configuration; silent if it has none."""
    logger = logging.getLogger(f"{LOGGER_NAME}.{node_name}")
    logger.setLevel(level_number(level))
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def level_number(level: str) -> int:
    """Map a core ``Log.level`` string ("debug", "info", ...) to a logging level."""
    return getattr(logging, level.upper(), logging.INFO)
