"""novakeeper: image cache manager for OpenStack compute nodes."""

__version__ = "0.1.0"
