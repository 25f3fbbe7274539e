"""Repository functions: all database access of the api service lives here."""
