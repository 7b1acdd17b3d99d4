"""What novakeeper remembers between runs: usage records, pins, the removal journal."""
