"""An example rig plugin (see pyproject.toml for its entry points)."""
