"""`novakeeper cache serve`: periodic passes, systemd integration, Prometheus metrics."""
