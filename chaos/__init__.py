"""The fault soak (`make chaos`, `python -m chaos`): real servers and workers under load while
workers and servers are killed and the database is cut, then checks from outside that nothing
accepted was lost or recorded twice. README "Guarantees" says what it proves."""
