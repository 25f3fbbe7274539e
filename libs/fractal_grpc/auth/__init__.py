"""Passwords, tokens and the principal of the current call."""
