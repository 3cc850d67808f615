"""The ``berth`` command line: thin commands over the services, Rich output, one-line errors."""
