"""What every statement runs on: the pool or one of its connections (tests pass either)."""

import asyncpg

Executor = asyncpg.Connection | asyncpg.Pool
