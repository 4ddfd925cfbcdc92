"""The lottery central: a single-threaded selectors reactor over SQLite.

loop (selector, timers, signals) <- connection (one peer's buffers and deadlines)
<- server (listener, limits, drain); service (the lottery) -> store (SQLite).
Run it with `python -m reactor`.
"""
