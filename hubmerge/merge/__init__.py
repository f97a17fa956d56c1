"""Planning, merge methods and the streaming executor."""
