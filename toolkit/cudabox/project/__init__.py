"""A user's own training project: its declaration (pyproject.toml, cudabox.toml or
requirements.txt) and what its compiled extensions were built for (the fatbin reader)."""
