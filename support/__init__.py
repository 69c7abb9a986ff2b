"""What the tests and the benchmarks both stand on: the real services (S3, PostgreSQL, Redis, worker
processes), the small world uploaded over the API, and the fuzz and load runs. Neither tests/ nor bench/
imports the other (the import contracts in pyproject.toml check it)."""
