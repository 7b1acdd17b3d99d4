"""Usage sources beyond the disks the scan reads: who else may be using a base file."""
