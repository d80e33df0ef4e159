"""Jobs: sessions, the priority queue, and the per-device executors that run them."""
