"""The inference path: decode, validate, predict, encode; and the services that load and
register versions for it. Every deployment mode is a thin adapter over this package."""
