"""The running proxy: admission of engine connections, the session relay, the key manager,
listeners, reload, health and the server that ties them together."""
