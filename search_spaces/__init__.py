"""Built-in search spaces, written as plugins of `nas`: each is also a worked example."""
