"""The ``mailhub`` admin command line."""
