"""One instructor per namespace; each method is one decorated function."""
