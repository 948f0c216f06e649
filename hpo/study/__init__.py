"""Studies: their definitions, how they are created and loaded, and the plan of which trial trains what."""
