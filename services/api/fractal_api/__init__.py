"""fractal-api: authentication and the public Fractal API v2; owns the database of record."""
