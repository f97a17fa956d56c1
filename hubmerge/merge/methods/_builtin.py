"""Imports every method family so each registers itself. Add new families here."""
