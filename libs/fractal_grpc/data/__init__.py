"""Rules of the reference for updating and deleting projects, datasets and images."""
