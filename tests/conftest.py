"""Our own test configuration. The hexinfra fixtures (postgres_url, nats_url) come from
the package's pytest11 plugin, exactly as a user's tests get them."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

# On a shared 2-core CI machine, time is noise, not a property: a first draw that loads
# the time-zone database, or a busy neighbour, must not fail a property test. What each
# property asserts is unchanged.
settings.register_profile("hexinfra", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hexinfra")
