"""hubmerge: Hub-native streaming model merging."""

__version__ = "0.1.0"

# The method registry fills the table of merge methods that spec checks read (hubmerge/spec/methods.py);
# importing it here, with the package, makes that table complete whichever module a program imports first.
from hubmerge.merge import methods as _methods  # noqa: E402, F401
