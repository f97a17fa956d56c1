"""hubmerge: Hub-native streaming model merging."""

__version__ = "0.1.0"
