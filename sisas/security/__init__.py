"""Who may do what: the roles and their NATS subject permissions, nkeys and signing
keys, and the profile ``sisas security init`` writes (users, auth.conf, env files)."""

__all__: list[str] = []
