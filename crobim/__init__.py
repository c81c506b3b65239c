"""CroBIM."""
