"""xcore network simulators: protocol-level (the real node code) and model-level (numpy)."""
