"""Who may call what: API keys with scopes, user-bound tokens, TLS/mTLS material and the
client side of all three. The gateway's interceptor (auth.py) and every process's server
and channels (tls.py, client.py) use it; `vidrec keys` manages keys."""
