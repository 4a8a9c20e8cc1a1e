"""Sample microservices and workflows: what `legato demo`, the tests and the benchmark run against."""
