"""Where requests go: a URL, the embedded model in a vLLM child process, or the mock server."""
