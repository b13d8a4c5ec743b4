"""DriftSched's exceptions.

Expected outcomes (a rejected request, an empty queue) are values, not exceptions. These are for misuse
and misconfiguration::

    DriftSchedError
    ├── ConfigError          a config value is invalid (the message names the value and the fix)
    │   ├── UnknownPolicyError   a policy name is not in the registry and is not "module:Class"
    │   └── PolicyOptionsError   an option the chosen policy does not take, or a value of the wrong type
    └── UnknownRequestError  an id that the scheduler does not hold (completed twice, never admitted)
"""

from __future__ import annotations


class DriftSchedError(Exception):
    """Base class of every DriftSched error."""


class ConfigError(DriftSchedError, ValueError):
    """A configuration value is invalid."""


class UnknownPolicyError(ConfigError):
    """A policy name that is neither registered nor importable."""


class PolicyOptionsError(ConfigError):
    """Options that the chosen policy's constructor does not take."""


class UnknownRequestError(DriftSchedError, KeyError):
    """The scheduler holds no request with this id."""
