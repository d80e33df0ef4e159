"""Narrow facades the instructors call; they own no state, the managers do."""
