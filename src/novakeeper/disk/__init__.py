"""What the node's disk holds: instance disks, nova's over-commit, the cache, the rest."""
