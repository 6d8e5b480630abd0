"""What a run stands on: checkpoints (the only Orbax user), the mesh and sharding,
multi-host helpers, files and locks, memory accounting, and reporting."""
