"""Workers' output: the launcher's console, how each worker is wired to it, and the relay."""
