"""Our own test configuration. The hexinfra fixtures (postgres_url, nats_url) come from
the package's pytest11 plugin, exactly as a user's tests get them."""

pytest_plugins = ["pytester"]
