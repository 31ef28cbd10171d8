"""The conformance suite: a pytest plugin and checks runnable against any registered backend."""
